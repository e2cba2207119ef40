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
import {
  dequantisationBits,
  gaussianLogp,
  likelihoodInput,
  likelihoodRange,
  meanAndStderr,
  truncNormalDequant,
  type LikelihoodOptions,
} from '../src/core/likelihood.js';
import { normalCdf } from '../src/core/train/noise.js';
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
          dequantise: 'none',
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
    const r = await likelihoodRange(model, x, 0, 4, { seed: 0, hutchinson: 'exact', dequantise: 'none' });
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
      const base: LikelihoodOptions = { seed: 3, dequantise: 'none', priorLogp: exactPrior(model), batchSize: n };
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

  test('truncated-normal dequantisation: x = b/255 + s e inside the cell, the bound against its closed form for Gaussian data', async () => {
    const sde = makeSde({ name: 've' });
    const s = sde.std(EPS);
    const { tau, entropy } = truncNormalDequant(s);
    assert.ok(Math.abs(s * tau - 1 / 510) < 1e-15, 'the truncation is the half-cell 1/510');
    // entropy of N(0, s^2) truncated to [-s tau, s tau], against Simpson's rule on -q ln q
    const Z = 2 * normalCdf(tau) - 1;
    const q = (x: number) => Math.exp((-0.5 * x * x) / (s * s)) / (Math.sqrt(2 * Math.PI) * s * Z);
    let h = 0;
    const m = 4000;
    const w = (2 * s * tau) / m;
    for (let i = 0; i <= m; i++) {
      const x = -s * tau + i * w;
      h += (i === 0 || i === m ? 1 : i % 2 ? 4 : 2) * -q(x) * Math.log(q(x));
    }
    h *= w / 3;
    assert.ok(Math.abs(h - entropy) < 1e-6, `entropy ${entropy} vs quadrature ${h}`);
    // below the uniform's on the same cell (ln(1/255)): the price in bits, 8.076 for VE's defaults
    assert.ok(entropy < Math.log(1 / 255));
    assert.ok(Math.abs(dequantisationBits('truncnormal', s) - 8.0765) < 1e-3, `${dequantisationBits('truncnormal', s)}`);
    assert.equal(dequantisationBits('uniform', s), 8);

    // per pixel: inside [b/255 - 1/510, b/255 + 1/510], from the same u as the uniform case
    const bytes = Float32Array.from([0, 1, 128, 255], (b) => b / 255);
    for (let i = 0; i < 200; i++) {
      const x = likelihoodInput(bytes, 0, 4, i, 'truncnormal', s);
      for (let k = 0; k < 4; k++) assert.ok(Math.abs(x[k] - bytes[k]) <= 1 / 510 + 1e-7, `seed ${i} pixel ${k}: ${x[k]}`);
    }

    // Gaussian data N(mu, v) per pixel: E_q[log p_eps(x)] + H(q) in closed form, since
    // E_q (x - mu)^2 = (b/255 - mu)^2 + s^2 (1 - 2 tau phi(tau) / Z). The mean over many images of the
    // same bytes (each its own u) must agree within its standard error.
    const mu = [0.1, 0.5, 0.5, 0.9];
    const sd = [0.3, 0.2, 0.25, 0.3];
    const model = gaussianModel(sde, [2, 2, 1], mu, sd);
    const b = [0, 100, 160, 255].map((v) => v / 255);
    const n = 64;
    const images = new Float32Array(n * 4);
    for (let i = 0; i < n; i++) images.set(b, i * 4);
    const r = await likelihoodRange(model, images, 0, n, {
      seed: 2,
      hutchinson: 'exact',
      dequantise: 'truncnormal',
      priorLogp: exactPrior(model),
      batchSize: n,
    });
    const phi = Math.exp(-0.5 * tau * tau) / Math.sqrt(2 * Math.PI);
    const m2 = 1 - (2 * tau * phi) / Z;
    let elbo = 4 * entropy;
    for (let k = 0; k < 4; k++) {
      const V = sd[k] ** 2 + sde.std(EPS) ** 2;
      elbo += -0.5 * Math.log(2 * Math.PI * V) - ((b[k] - mu[k]) ** 2 + s * s * m2) / (2 * V);
    }
    const want = -elbo / (4 * Math.LN2);
    const { mean, stderr } = meanAndStderr(r.bpd);
    assert.ok(Math.abs(mean - want) < 3 * stderr + 1e-3, `mean ${mean} ± ${stderr}, closed form ${want}`);
    // and each image's value is -log p(x) of its own x plus the entropy term
    for (let i = 0; i < 3; i++) {
      const x = likelihoodInput(images, i, 4, 2, 'truncnormal', s);
      const one = -model.logp(EPS, x) / (4 * Math.LN2) - entropy / Math.LN2;
      assert.ok(Math.abs(r.bpd[i] - one) < 1e-3, `image ${i}: ${r.bpd[i]} vs ${one}`);
    }
  });

  test('the model that learnt b/255 blurred by std(eps) loses far fewer bits with truncnormal than with uniform', async () => {
    // data: two grey levels per pixel, atoms at b/255 seen through the SDE (a mixture with tiny components)
    const sde = makeSde({ name: 've' });
    const model = mixtureModel(
      sde,
      [2, 2, 1],
      [0.5, 0.5],
      [
        [0, 0, 1, 1],
        [1, 1, 0, 0],
      ],
      1e-6,
    );
    const images = Float32Array.from([0, 0, 1, 1, 1, 1, 0, 0]);
    const o: LikelihoodOptions = { seed: 1, hutchinson: 'exact', priorLogp: exactPrior(model), batchSize: 2 };
    const uni = await likelihoodRange(model, images, 0, 2, { ...o, dequantise: 'uniform' });
    const tn = await likelihoodRange(model, images, 0, 2, { ...o, dequantise: 'truncnormal' });
    // the discrete law has 1 bit per image = 0.25 bits/dim; any valid bound is above it
    for (let i = 0; i < 2; i++) {
      assert.ok(tn.bpd[i] > 0.25 - 0.05, `truncnormal ${tn.bpd[i]}`);
      assert.ok(tn.bpd[i] < uni.bpd[i] - 1, `truncnormal ${tn.bpd[i]} vs uniform ${uni.bpd[i]}`);
    }
  });

  test('the probes: K >= 2 gives each image its probe variance, and it shrinks like 1/K', async () => {
    const model = models('ve').mixture;
    const x = await points(model, 16);
    const base: LikelihoodOptions = { seed: 3, dequantise: 'none', priorLogp: exactPrior(model), batchSize: 16 };
    const one = await likelihoodRange(model, x, 0, 16, { ...base, probes: 1 });
    assert.ok(one.probeVar.every(Number.isNaN), 'one probe: no variance to measure');
    const exact = await likelihoodRange(model, x, 0, 16, { ...base, hutchinson: 'exact' });
    assert.ok(exact.probeVar.every((v) => v === 0));
    const k4 = await likelihoodRange(model, x, 0, 16, { ...base, probes: 4 });
    const k16 = await likelihoodRange(model, x, 0, 16, { ...base, probes: 16 });
    const mean = (a: Float64Array) => a.reduce((s, v) => s + v, 0) / a.length;
    // the probe variance predicts the actual error against the exact divergence
    const err2 = mean(Float64Array.from(k4.bpd, (v, i) => (v - exact.bpd[i]) ** 2));
    assert.ok(err2 < 4 * mean(k4.probeVar) && err2 > mean(k4.probeVar) / 4, `error^2 ${err2} vs probe variance ${mean(k4.probeVar)}`);
    const ratio = mean(k4.probeVar) / mean(k16.probeVar);
    assert.ok(ratio > 2 && ratio < 8, `K=4 over K=16 probe variance ratio ${ratio} (expected ~4)`);
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
