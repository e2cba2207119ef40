/**
 * Samplers (src/core/sampling), proven without training: with the exact perturbed score of a
 * Gaussian and of a two-Gaussian mixture in place of the network, every sampler's output
 * matches the data distribution (means, variances, mode weights) within statistical tolerance,
 * under VE, VP and sub-VP. Plus: determinism across batch sizes and index splits, latents,
 * leak-free tensors, one-line errors, and the PyTorch parity weights end to end.
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/core/backend/index.js';
import { makeSde, type SdeName } from '../src/core/sde.js';
import { gaussianModel, mixtureModel } from './helpers/analytic.js';
import { encode, sampleRange, timeOfSigma, sigmaOf, type SampleOptions, type SamplerName } from '../src/core/sampling/index.js';
import { scoreModelFromStateDict } from '../src/core/score/net.js';

const FIXTURE = 'test/fixtures/scorenet_parity.safetensors';

before(async () => {
  await initBackend('wasm', { log: () => {} });
});

// A 64-dimensional Gaussian with varied means and scales: high enough dimension that the
// per-sample Langevin step size of PC behaves as it does on images (||s|| concentrates).
const D = 64;
const SHAPE = [8, 8, 1] as const;
const MU = Array.from({ length: D }, (_, q) => Math.sin(q));
const S0 = Array.from({ length: D }, (_, q) => 0.2 + (0.6 * ((q * 7) % 10)) / 10);

function stats(x: Float32Array, n: number, d: number) {
  const mean = new Float64Array(d);
  const sd = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let q = 0; q < d; q++) mean[q] += x[i * d + q] / n;
  for (let i = 0; i < n; i++) for (let q = 0; q < d; q++) sd[q] += (x[i * d + q] - mean[q]) ** 2 / (n - 1);
  for (let q = 0; q < d; q++) sd[q] = Math.sqrt(sd[q]);
  return { mean, sd };
}

// Std-ratio allowance beyond sampling error, per sampler: the bias each has with the exact score
// at default settings (measured, n = 1000): EM, ODE ~0.5%; Heun with churn ~2% (churned steps are
// less accurate; without churn 0.6%); PC ~3% (unadjusted Langevin at snr 0.16 over-disperses by
// O(snr^2), with no Metropolis correction, as in Song et al.).
const BIAS: Record<SamplerName, number> = { em: 0.01, ode: 0.01, heun: 0.03, pc: 0.04 };

describe('samplers match a Gaussian (exact score)', () => {
  const n = 400;
  for (const sdeName of ['ve', 'vp', 'subvp'] as SdeName[]) {
    for (const sampler of ['em', 'pc', 'ode', 'heun'] as SamplerName[]) {
      // keep the suite short: PC and EM (500 and 1000 steps) on VE and VP; ODE and Heun on all three
      if ((sampler === 'pc' || sampler === 'em') && sdeName === 'subvp') continue;
      test(`${sampler} / ${sdeName}`, async () => {
        const model = gaussianModel(makeSde({ name: sdeName }), SHAPE, MU, S0);
        const r = await sampleRange(model, { sampler, seed: 7, batchSize: n }, 0, n);
        const { mean, sd } = stats(r.samples, n, D);
        let ratio = 0;
        for (let q = 0; q < D; q++) {
          const z = (mean[q] - MU[q]) / (S0[q] / Math.sqrt(n));
          assert.ok(Math.abs(z) < 4.5, `dim ${q}: mean ${mean[q]} vs ${MU[q]} (z = ${z.toFixed(2)})`);
          assert.ok(Math.abs(sd[q] / S0[q] - 1) < 0.2 + BIAS[sampler], `dim ${q}: std ${sd[q]} vs ${S0[q]}`);
          ratio += sd[q] / S0[q] / D;
        }
        // the average std ratio has standard error 1/sqrt(2 n D) ~ 0.0044
        assert.ok(Math.abs(ratio - 1) < 0.015 + BIAS[sampler], `mean std ratio ${ratio}`);
      });
    }
  }
});

describe('samplers match a mixture of two Gaussians (exact score)', () => {
  const n = 600;
  const d = D;
  const w = [0.3, 0.7] as [number, number];
  const m1 = Array.from({ length: d }, () => 0.5);
  const m2 = Array.from({ length: d }, () => -0.5);
  const v = 0.25;
  for (const sampler of ['em', 'pc', 'ode', 'heun'] as SamplerName[]) {
    test(`${sampler} / ve: mode weights, mode means and spread`, async () => {
      const model = mixtureModel(makeSde({ name: 've' }), SHAPE, w, [m1, m2], v);
      const r = await sampleRange(model, { sampler, seed: 11, batchSize: n }, 0, n);
      let first = 0;
      const sums = [0, 0];
      const sq = [0, 0];
      for (let i = 0; i < n; i++) {
        let proj = 0;
        for (let q = 0; q < d; q++) proj += r.samples[i * d + q];
        const k = proj > 0 ? 0 : 1;
        if (k === 0) first++;
        for (let q = 0; q < d; q++) {
          const c = r.samples[i * d + q] - (k === 0 ? 0.5 : -0.5);
          sums[k] += c;
          sq[k] += c * c;
        }
      }
      const p = first / n;
      const se = Math.sqrt((w[0] * w[1]) / n);
      assert.ok(Math.abs(p - w[0]) < 4 * se, `weight of the first mode ${p} vs ${w[0]} (se ${se.toFixed(3)})`);
      const counts = [first, n - first];
      for (const k of [0, 1]) {
        const bias = sums[k] / (counts[k] * d);
        const varHat = sq[k] / (counts[k] * d);
        assert.ok(Math.abs(bias) < 0.05, `mode ${k}: mean offset ${bias}`);
        assert.ok(Math.abs(Math.sqrt(varHat / v) - 1) < 0.05 + BIAS[sampler], `mode ${k}: std ${Math.sqrt(varHat)} vs ${Math.sqrt(v)}`);
      }
    });
  }
});

describe('determinism and the index-range contract', () => {
  const model = gaussianModel(makeSde({ name: 've' }), SHAPE, MU, S0);
  const opts = (sampler: SamplerName): SampleOptions => ({ sampler, seed: 5, steps: sampler === 'heun' ? 6 : 20, rtol: 1e-3, atol: 1e-3 });
  for (const sampler of ['em', 'pc', 'ode', 'heun'] as SamplerName[]) {
    test(`${sampler}: same seed identical; sample i the same in batches of 1 and 8 and in ranges [3,7) and [0,8)`, async () => {
      const all = await sampleRange(model, { ...opts(sampler), batchSize: 8 }, 0, 8);
      const again = await sampleRange(model, { ...opts(sampler), batchSize: 8 }, 0, 8);
      assert.deepEqual(again.samples, all.samples);
      const ones = await sampleRange(model, { ...opts(sampler), batchSize: 1 }, 0, 8);
      assert.deepEqual(ones.samples, all.samples);
      const mid = await sampleRange(model, { ...opts(sampler), batchSize: 3 }, 3, 7);
      assert.deepEqual(mid.samples, all.samples.subarray(3 * D, 7 * D));
      const other = await sampleRange(model, { ...opts(sampler), seed: 6, batchSize: 8 }, 0, 8);
      assert.notDeepEqual(other.samples, all.samples);
    });
  }

  test('network (parity weights, wasm): sample i is bit-identical in a batch of 8 and alone', async () => {
    const net = scoreModelFromStateDict(FIXTURE);
    try {
      const o: SampleOptions = { sampler: 'heun', steps: 2, seed: 0 };
      const eight = await sampleRange(net, { ...o, batchSize: 8 }, 0, 8);
      const alone = await sampleRange(net, { ...o, batchSize: 1 }, 5, 6);
      assert.deepEqual(alone.samples, eight.samples.subarray(5 * 784, 6 * 784));
    } finally {
      net.dispose();
    }
  });
});

describe('ODE sampler: latents and NFE', () => {
  test('decode(encode(x)) returns x; a given latent replaces the prior draw', async () => {
    const model = gaussianModel(makeSde({ name: 'vp' }), SHAPE, MU, S0);
    const x = await sampleRange(model, { sampler: 'ode', seed: 1, batchSize: 4 }, 0, 4);
    const { latent } = await encode(model, x.samples, { rtol: 1e-7, atol: 1e-7 });
    const back = await sampleRange(model, { sampler: 'ode', seed: 99, latent, rtol: 1e-7, atol: 1e-7 }, 0, 4);
    let err = 0;
    for (let q = 0; q < x.samples.length; q++) err = Math.max(err, Math.abs(back.samples[q] - x.samples[q]));
    assert.ok(err < 1e-3, `round trip error ${err}`);
  });

  test('NFE falls as the tolerance loosens', async () => {
    const model = gaussianModel(makeSde({ name: 've' }), SHAPE, MU, S0);
    let last = Infinity;
    for (const tol of [1e-6, 1e-4, 1e-2]) {
      const r = await sampleRange(model, { sampler: 'ode', seed: 1, rtol: tol, atol: tol }, 0, 2);
      assert.ok(r.nfe[0] < last, `tol ${tol}: nfe ${r.nfe[0]} not below ${last}`);
      last = r.nfe[0];
    }
  });

  test('heun: NFE is 2N - 1; sigma(t) and its inverse agree for every SDE', async () => {
    const model = gaussianModel(makeSde({ name: 've' }), SHAPE, MU, S0);
    const r = await sampleRange(model, { sampler: 'heun', steps: 10, seed: 1, batchSize: 2 }, 0, 2);
    assert.equal(r.nfe[0], 19);
    assert.equal(r.calls, 19);
    for (const name of ['ve', 'vp', 'subvp'] as SdeName[]) {
      const sde = makeSde({ name });
      for (const t of [1e-3, 0.1, 0.5, 1, 1.2]) assert.ok(Math.abs(timeOfSigma(sde, sigmaOf(sde, t)) - t) < 1e-9, `${name} t=${t}`);
    }
  });
});

describe('hygiene', () => {
  test('no tensors leak through any sampler', async () => {
    const model = mixtureModel(
      makeSde({ name: 've' }),
      [2, 1, 1],
      [0.5, 0.5],
      [
        [1, 1],
        [-1, -1],
      ],
      0.1,
    );
    const before = tf.memory().numTensors;
    for (const sampler of ['em', 'pc', 'ode', 'heun'] as SamplerName[])
      await sampleRange(model, { sampler, seed: 1, steps: sampler === 'heun' ? 4 : 10, batchSize: 3 }, 0, 5);
    await encode(model, new Float32Array(4), {});
    assert.equal(tf.memory().numTensors, before);
  });

  test('bad input: one-line errors', async () => {
    const model = gaussianModel(makeSde({ name: 've' }), [2, 1, 1], [0, 0], [1, 1]);
    const bad = async (o: Partial<SampleOptions>, re: RegExp) =>
      assert.rejects(
        sampleRange(model, { sampler: 'em', seed: 1, ...o } as SampleOptions, 0, 2),
        (e: Error) => re.test(e.message) && !e.message.includes('\n'),
      );
    await bad({ sampler: 'ddim' as SamplerName }, /unknown sampler 'ddim' \(expected em, pc, ode, heun\)/);
    await bad({ steps: 0 }, /steps must be an integer >= 2/);
    await bad({ sampler: 'heun', steps: -3 }, /steps must be an integer >= 1/);
    await bad({ sampler: 'ode', rtol: 0 }, /rtol must be positive/);
    await bad({ sampler: 'ode', atol: -1e-5 }, /atol must be positive/);
    await bad({ sampler: 'ode', latent: new Float32Array(3) }, /latent has 3 values, not a multiple of the sample size 2/);
    await bad({ sampler: 'ode', latent: new Float32Array(2) }, /latent holds 1 samples, range \[0, 2\) needs 2/);
    await bad({ batchSize: 0 }, /batch size must be a positive integer/);
  });
});
