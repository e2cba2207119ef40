/**
 * Bits/dim (src/core/likelihood.ts) without training: with the exact score of a Gaussian and of
 * a two-Gaussian mixture, the probability-flow likelihood with exact divergence equals the
 * analytic log-density within 1e-3 bits/dim, and the Hutchinson estimates agree with it within
 * their standard error. Plus: the +8 bits and dequantisation, determinism over splits, and the
 * PyTorch parity weights end to end on wasm and cpu.
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/core/backend/index.js';
import { dequantise } from '../src/core/data/mnist.js';
import { gaussianLogp, likelihoodRange, meanAndStderr, type LikelihoodOptions } from '../src/core/likelihood.js';
import { Rng, Stream } from '../src/core/rng.js';
import { gaussianModel, mixtureModel, type AnalyticModel } from './helpers/analytic.js';
import { scoreModelFromStateDict } from '../src/core/score/net.js';
import { sampleRange } from '../src/core/sampling/index.js';
import { makeSde, type SdeName } from '../src/core/sde.js';

const FIXTURE = 'test/fixtures/scorenet_parity.safetensors';
const EPS = 1e-3;

before(async () => {
  await initBackend('wasm', { log: () => {} });
});

function models(name: SdeName): Record<string, AnalyticModel> {
  const sde = makeSde({ name });
  return {
    gaussian: gaussianModel(sde, [2, 2, 1], [0.5, -0.3, 0.2, 0.8], [0.3, 0.5, 0.2, 0.6]),
    mixture: mixtureModel(
      sde,
      [2, 2, 1],
      [0.3, 0.7],
      [
        [0.8, 0.8, 0.2, 0.2],
        [0.2, 0.3, 0.7, 0.6],
      ],
      0.02,
    ),
  };
}

/** Points from the model's data distribution (samples of the exact-score ODE sampler, then fixed). */
async function points(model: AnalyticModel, n: number): Promise<Float32Array> {
  return (await sampleRange(model, { sampler: 'heun', churn: 0, steps: 30, seed: 123, batchSize: n }, 0, n)).samples;
}

/** The exact marginal at t = 1 as prior, so the only error left is the ODE's and the estimator's. */
function exactPrior(model: AnalyticModel): LikelihoodOptions['priorLogp'] {
  return (z) => model.logp(1, z);
}

describe('likelihood = analytic log-density (exact divergence)', () => {
  for (const sdeName of ['ve', 'vp', 'subvp'] as SdeName[]) {
    for (const [kind, model] of Object.entries(models(sdeName))) {
      test(`${kind} / ${sdeName}: within 1e-3 bits/dim`, async () => {
        const n = 12;
        const x = await points(model, n);
        const d = 4;
        const r = await likelihoodRange(model, x, 0, n, {
          seed: 0,
          hutchinson: 'exact',
          dequantise: false,
          priorLogp: exactPrior(model),
          batchSize: n,
        });
        for (let i = 0; i < n; i++) {
          const want = -model.logp(EPS, x.subarray(i * d, (i + 1) * d)) / (d * Math.LN2);
          assert.ok(Math.abs(r.bpd[i] - want) < 1e-3, `image ${i}: ${r.bpd[i]} vs analytic ${want} bits/dim`);
        }
      });
    }
  }

  test("with the SDE's own prior (no exact marginal), VE's mismatch at t = 1 is what is left", async () => {
    const model = models('ve').gaussian;
    const x = await points(model, 4);
    const r = await likelihoodRange(model, x, 0, 4, { seed: 0, hutchinson: 'exact', dequantise: false });
    for (let i = 0; i < 4; i++) {
      const want = -model.logp(EPS, x.subarray(i * 4, (i + 1) * 4)) / (4 * Math.LN2);
      assert.ok(Math.abs(r.bpd[i] - want) < 0.02, `image ${i}: ${r.bpd[i]} vs ${want}`);
    }
  });
});

describe('Hutchinson agrees with the exact divergence within its standard error', () => {
  for (const probe of ['gaussian', 'rademacher'] as const) {
    test(`${probe}, mixture / ve, K = 1 and K = 4`, async () => {
      const model = models('ve').mixture;
      const n = 48;
      const x = await points(model, n);
      const base: LikelihoodOptions = { seed: 3, dequantise: false, priorLogp: exactPrior(model), batchSize: n };
      const exact = await likelihoodRange(model, x, 0, n, { ...base, hutchinson: 'exact' });
      let lastSe = Infinity;
      for (const k of [1, 4]) {
        const h = await likelihoodRange(model, x, 0, n, { ...base, hutchinson: probe, probes: k });
        const diff = Array.from(h.bpd, (v, i) => v - exact.bpd[i]);
        const { mean, stderr } = meanAndStderr(diff);
        assert.ok(Math.abs(mean) < 3.5 * stderr + 1e-4, `K=${k}: mean difference ${mean} with standard error ${stderr}`);
        assert.ok(stderr > 0 && stderr < lastSe, `K=${k}: standard error ${stderr} should shrink with more probes`);
        lastSe = stderr;
      }
    });
  }
});

describe('bits/dim of 8-bit data', () => {
  test('dequantised (x*255 + u)/256 with u from (seed, i); +8 bits; logp of the dequantised x', async () => {
    // A Gaussian around mid-grey, on 4 "pixels" of bytes
    const model = gaussianModel(makeSde({ name: 've' }), [2, 2, 1], [0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2]);
    const bytes = [
      [100, 120, 140, 160],
      [30, 200, 128, 90],
    ];
    const x = Float32Array.from(bytes.flat(), (b) => b / 255);
    const r = await likelihoodRange(model, x, 0, 2, { seed: 9, hutchinson: 'exact', priorLogp: exactPrior(model) });
    for (let i = 0; i < 2; i++) {
      const u = new Rng(9, Stream.Dequantise, i).uniformArray(4);
      const xd = dequantise(x.subarray(i * 4, (i + 1) * 4), u);
      const want = -model.logp(EPS, xd) / (4 * Math.LN2) + 8;
      assert.ok(Math.abs(r.bpd[i] - want) < 1e-3, `image ${i}: ${r.bpd[i]} vs ${want}`);
      assert.ok(Math.abs(r.logp[i] - model.logp(EPS, xd)) < 4e-3 * Math.LN2 * 4);
    }
  });

  test('per-image values do not depend on batching or the split, and no tensors leak', async () => {
    const model = models('vp').mixture;
    const x = await points(model, 8);
    const o: LikelihoodOptions = { seed: 4, hutchinson: 'rademacher', probes: 2, rtol: 1e-4, atol: 1e-4 };
    const before = tf.memory().numTensors;
    const all = await likelihoodRange(model, x, 0, 8, { ...o, batchSize: 8 });
    const part = await likelihoodRange(model, x, 3, 7, { ...o, batchSize: 1 });
    assert.deepEqual(part.bpd, all.bpd.subarray(3, 7));
    assert.equal(tf.memory().numTensors, before);
  });

  test('gaussianLogp matches the SDE prior; bad options are one-line errors', async () => {
    const sde = makeSde({ name: 've' });
    const z = new Rng(1, Stream.Test).normal(6);
    const t = tf.tensor2d(z, [1, 6]);
    const want = sde.priorLogp(t).dataSync()[0];
    t.dispose();
    assert.ok(Math.abs(gaussianLogp(z, sde.priorStd()) - want) < 1e-3);
    const model = models('ve').gaussian;
    const x = new Float32Array(8).fill(0.5);
    await assert.rejects(likelihoodRange(model, x, 0, 2, { seed: 0, probes: 0 }), /probes must be a positive integer/);
    await assert.rejects(likelihoodRange(model, x, 0, 2, { seed: 0, rtol: 0 }), /rtol must be positive/);
    await assert.rejects(
      likelihoodRange(model, x, 0, 2, { seed: 0, hutchinson: 'laplace' as 'gaussian' }),
      /unknown divergence estimator 'laplace'/,
    );
    await assert.rejects(likelihoodRange(model, x, 0, 3, { seed: 0 }), /bad image range \[0, 3\) of 2 images/);
    await assert.rejects(likelihoodRange(model, new Float32Array(7), 0, 1, { seed: 0 }), /not whole images of 4/);
  });
});

describe('PyTorch parity weights end to end', () => {
  for (const backend of ['wasm', 'cpu']) {
    test(`ODE sampler and likelihood on ${backend}`, async () => {
      await initBackend(backend as 'wasm' | 'cpu', { log: () => {} });
      const net = scoreModelFromStateDict(FIXTURE);
      try {
        // cpu is slow: one RK45 step over the whole interval (7 evaluations), tolerances that accept it
        const loose = backend === 'cpu' ? { rtol: 1e6, atol: 1e6, firstStep: 1 } : { rtol: 1e-2, atol: 1e-2 };
        const s = await sampleRange(net, { sampler: 'ode', seed: 0, batchSize: 1, ...loose }, 0, 1);
        assert.equal(s.samples.length, 784);
        assert.ok(s.samples.every(Number.isFinite));
        assert.ok(s.nfe[0] >= 7);
        const img = Float32Array.from({ length: 784 }, (_, q) => ((q * 37) % 256) / 255);
        const l = await likelihoodRange(net, img, 0, 1, { seed: 0, ...loose });
        assert.ok(Number.isFinite(l.bpd[0]) && l.bpd[0] > 0, `bpd ${l.bpd[0]}`);
        if (backend === 'cpu') assert.equal(l.nfe[0], 7);
      } finally {
        net.dispose();
        await initBackend('wasm', { log: () => {} });
      }
    });
  }
});
