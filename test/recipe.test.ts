/** Training recipes: the fast recipe's noise-level law, loss weight and lr schedule against closed forms; recorded and resumed exactly; bad names fail cleanly. */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/core/backend/index.js';
import { readSafetensors } from '../src/core/io/safetensors.js';
import { dsmLossPerSample } from '../src/core/loss.js';
import { modelConfig } from '../src/core/model/config.js';
import { initParams } from '../src/core/model/params.js';
import { ScoreNet } from '../src/core/model/scorenet.js';
import { makeSde } from '../src/core/sde.js';
import { adamStep, newOptimState } from '../src/core/train/adam.js';
import { loadTrainingCheckpoint } from '../src/core/train/checkpoint.js';
import { RECIPES, TRAIN_DEFAULTS, trainConfig } from '../src/core/train/config.js';
import { GradEngine } from '../src/core/train/engine.js';
import {
  likelihoodNormaliser,
  likelihoodWeight,
  normalCdf,
  normalQuantile,
  trainTime,
  trainTimeCdf,
  trainTimeDensity,
} from '../src/core/train/noise.js';
import { lrAt } from '../src/core/train/schedule.js';
import { errorLines, runBin, tempDir, TINY_NET } from './helpers/cli.js';

const FAST = trainConfig(RECIPES.fast);

test('normal quantile and CDF agree with tabulated values and invert each other', () => {
  // Phi^-1(0.975) = 1.959963984540054, Phi^-1(0.5) = 0, Phi^-1(1e-6) = -4.753424308822899
  assert.ok(Math.abs(normalQuantile(0.975) - 1.959963984540054) < 1e-8);
  assert.equal(normalQuantile(0.5), 0);
  assert.ok(Math.abs(normalQuantile(1e-6) + 4.753424308822899) < 1e-7);
  assert.ok(Math.abs(normalCdf(1) - 0.8413447460685429) < 2e-7);
  for (const p of [1e-9, 1e-4, 0.01, 0.3, 0.7, 0.99, 1 - 1e-7]) {
    assert.ok(Math.abs(normalCdf(normalQuantile(p)) - p) < 2e-7 * Math.max(p, 1e-3), `p = ${p}`);
  }
  assert.equal(normalQuantile(0), -Infinity);
});

/**
 * Kolmogorov-Smirnov distance of samples to a CDF that may have atoms: at each distinct value v,
 * |F_n(v) - F(v)| and |F_n(v-) - F(v-)| with F(v-) = F(v) - (the atom at v, given by atomAt).
 */
function ksDistance(samples: Float64Array, cdf: (x: number) => number, atomAt: (x: number) => number): number {
  const s = Float64Array.from(samples).sort();
  const n = s.length;
  let d = 0;
  for (let i = 0; i < n;) {
    let j = i;
    while (j < n && s[j] === s[i]) j++;
    const f = cdf(s[i]);
    d = Math.max(d, Math.abs(j / n - f), Math.abs(i / n - (f - atomAt(s[i]))));
    i = j;
  }
  return d;
}

test('fast recipe: t over many (step, index) draws follows the clipped log-normal law (KS)', () => {
  // the engine's own path: GradEngine.inputs draws t for sample j of step k from (seed, k, j)
  const cfg = trainConfig({ ...RECIPES.fast, batchSize: 100, model: { channels: [8, 16, 16, 16], embedDim: 16 } });
  const images = { n: 100, h: 28, w: 28, data: new Float32Array(100 * 784) };
  const engine = new GradEngine(cfg, images);
  const steps = 100;
  const t = new Float64Array(steps * 100);
  for (let k = 0; k < steps; k++) t.set(engine.inputs(k, 0, 100).t, k * 100);
  engine.dispose();
  const eps32 = Math.fround(cfg.eps);
  // the atom at eps is P(sigma <= sigma(eps)) = F(eps); the one at 1 is 1 - F(1-)
  const cdf = (x: number) => trainTimeCdf(cfg, x === eps32 ? cfg.eps : x);
  const atom = (x: number) => (x === eps32 ? trainTimeCdf(cfg, cfg.eps) : x === 1 ? 1 - trainTimeCdf(cfg, 1 - 1e-12) : 0);
  const d = ksDistance(t, cdf, atom);
  // P(sqrt(n) D > 1.95) ~ 0.001 for a sample of the law; a uniform t would give D ~ 0.4
  assert.ok(d * Math.sqrt(t.length) < 1.95, `KS distance ${d.toFixed(4)} (n = ${t.length})`);
  // the test has power: the same draws reject a law whose P_mean is off by 0.1
  const off = { ...cfg, pMean: cfg.pMean + 0.1 };
  const dOff = ksDistance(
    t,
    (x) => trainTimeCdf(off, x === eps32 ? cfg.eps : x),
    (x) => (x === eps32 ? trainTimeCdf(off, cfg.eps) : 0),
  );
  assert.ok(dOff * Math.sqrt(t.length) > 1.95, `KS distance to a shifted law ${dOff.toFixed(4)}`);
  const median = Float64Array.from(t).sort()[t.length / 2];
  const sigma = 0.01 * Math.exp(median * Math.log(2200));
  assert.ok(Math.abs(Math.log(sigma) - cfg.pMean) < 0.05, `median sigma ${sigma}, expected exp(${cfg.pMean})`);
  // the seed recipe's draw is still U(eps, 1)
  const seed = new GradEngine(trainConfig({ batchSize: 100, model: cfg.model }), images);
  const u = new Float64Array(50 * 100);
  for (let k = 0; k < 50; k++) u.set(seed.inputs(k, 0, 100).t, k * 100);
  seed.dispose();
  const du = ksDistance(
    u,
    (x) => Math.min(1, Math.max(0, (x - 1e-3) / (1 - 1e-3))),
    () => 0,
  );
  assert.ok(du * Math.sqrt(u.length) < 1.95, `uniform KS distance ${du.toFixed(4)}`);
});

const LIK = trainConfig(RECIPES.likelihood);

test('likelihood noise: normaliser, density and CDF against closed forms and quadrature of g^2/std^2 (VE)', () => {
  const sde = makeSde({ name: 've' });
  const eps = LIK.eps;
  // Z = ln(std^2(1)/std^2(eps)) with std^2 = sigma^2 - sigma_min^2, by hand for eps = 1e-3, sigma 0.01..22
  const L = Math.log(2200);
  const std2 = (t: number) => 1e-4 * (Math.exp(2 * L * t) - 1);
  assert.ok(Math.abs(likelihoodNormaliser(LIK) - Math.log(std2(1) / std2(eps))) < 1e-12);
  assert.ok(Math.abs(likelihoodNormaliser(LIK) - 19.5586) < 1e-4, `Z = ${likelihoodNormaliser(LIK)}`);
  // ... and against Simpson's rule on the SDE's own g2 and std, in ln t (the integrand ~ 1/t near 0)
  const f = (t: number) => sde.g2(t) / sde.std(t) ** 2;
  const quad = (a: number, b: number) => {
    const m = 20000;
    const la = Math.log(a);
    const h = (Math.log(b) - la) / m;
    let sum = 0;
    for (let i = 0; i <= m; i++) {
      const t = Math.exp(la + i * h);
      sum += (i === 0 || i === m ? 1 : i % 2 ? 4 : 2) * f(t) * t;
    }
    return (sum * h) / 3;
  };
  assert.ok(Math.abs(quad(eps, 1) - likelihoodNormaliser(LIK)) < 1e-8, `quadrature ${quad(eps, 1)}`);
  // the truncation matters: Z diverges like -ln eps as eps -> 0 (std(0) = 0)
  const z4 = likelihoodNormaliser({ ...LIK, eps: 1e-4 });
  const z5 = likelihoodNormaliser({ ...LIK, eps: 1e-5 });
  assert.ok(Math.abs(z5 - z4 - Math.log(10)) < 1e-3, `Z(1e-5) - Z(1e-4) = ${z5 - z4}, ln 10 = ${Math.log(10)}`);
  // density = (g^2/std^2) / Z, the CDF's derivative, and its integral to t
  for (const t of [0.0011, 0.01, 0.2, 0.5, 0.99]) {
    const p = trainTimeDensity(LIK, t);
    assert.ok(Math.abs(p - f(t) / likelihoodNormaliser(LIK)) < 1e-9 * p, `density at ${t}`);
    const h = 1e-6;
    const dF = (trainTimeCdf(LIK, t + h) - trainTimeCdf(LIK, t - h)) / (2 * h);
    assert.ok(Math.abs(dF - p) < 1e-5 * p, `F'(${t}) = ${dF}, p = ${p}`);
    assert.ok(Math.abs(trainTimeCdf(LIK, t) - quad(eps, t) / likelihoodNormaliser(LIK)) < 1e-8, `F(${t})`);
    // std(t) is log-uniform: ln std^2 is affine in F
    assert.ok(Math.abs(Math.log(sde.std(t) ** 2 / sde.std(eps) ** 2) / likelihoodNormaliser(LIK) - trainTimeCdf(LIK, t)) < 1e-9);
  }
  assert.equal(trainTimeCdf(LIK, eps), 0);
  assert.equal(trainTimeCdf(LIK, 1), 1);
  // inversion: F(F^-1(u)) = u, endpoints included
  for (const u of [0, 1e-9, 0.1, 0.5, 0.9, 1 - 1e-12]) {
    assert.ok(Math.abs(trainTimeCdf(LIK, trainTime(LIK, u)) - u) < 1e-9, `u = ${u}`);
  }
  assert.ok(Math.abs(trainTime(LIK, 0) - eps) < 1e-15);
  assert.equal(likelihoodWeight(LIK), likelihoodNormaliser(LIK) / (1 - eps));
});

test('likelihood recipe: t over many (step, index) draws follows p ~ g^2/std^2 (KS), and not the uniform law', () => {
  const cfg = trainConfig({ ...RECIPES.likelihood, batchSize: 100, model: { channels: [8, 16, 16, 16], embedDim: 16 } });
  const images = { n: 100, h: 28, w: 28, data: new Float32Array(100 * 784) };
  const engine = new GradEngine(cfg, images);
  const t = new Float64Array(100 * 100);
  for (let k = 0; k < 100; k++) t.set(engine.inputs(k, 0, 100).t, k * 100);
  engine.dispose();
  const clamp = (x: number) => Math.min(1, Math.max(cfg.eps, x));
  const d = ksDistance(
    t,
    (x) => trainTimeCdf(cfg, clamp(x)),
    () => 0,
  );
  assert.ok(d * Math.sqrt(t.length) < 1.95, `KS distance ${d.toFixed(4)} (n = ${t.length})`);
  // power: the same draws reject U(eps, 1), and the law with eps ten times larger
  const du = ksDistance(
    t,
    (x) => trainTimeCdf({ ...cfg, noise: 'uniform' }, clamp(x)),
    () => 0,
  );
  assert.ok(du * Math.sqrt(t.length) > 1.95, `KS distance to U(eps, 1) ${du.toFixed(4)}`);
  const other = { ...cfg, eps: 1e-2 };
  const d2 = ksDistance(
    t,
    (x) => trainTimeCdf(other, Math.min(1, Math.max(other.eps, x))),
    () => 0,
  );
  assert.ok(d2 * Math.sqrt(t.length) > 1.95, `KS distance to the eps = 1e-2 law ${d2.toFixed(4)}`);
  // half of the draws have std below the geometric mean of std(eps) and std(1)
  const sde = makeSde({ name: 've' });
  const below = t.filter((x) => sde.std(x) < Math.sqrt(sde.std(cfg.eps) * sde.std(1))).length / t.length;
  assert.ok(Math.abs(below - 0.5) < 0.02, `fraction below the log-midpoint ${below}`);
});

test('likelihood weighting with importance-sampled t: c ||std s + z||^2 = g^2 ||s + z/std||^2 / ((1 - eps) p(t))', async () => {
  await initBackend('cpu', { log: () => {} });
  const sde = makeSde({ name: 've' });
  const n = 4;
  const d = 6;
  const ts = [0.0012, 0.05, 0.4, 0.97];
  const x0 = Float32Array.from({ length: n * d }, (_, i) => ((i * 37) % 11) / 11);
  const z = Float32Array.from({ length: n * d }, (_, i) => Math.sin(i * 1.7) * 1.3);
  const score = (x: tf.Tensor4D, t: tf.Tensor1D) => {
    const v = sde.stdTensor(t).square().add(0.09).reshape([-1, 1, 1, 1]);
    return x.sub(0.45).neg().div(v) as tf.Tensor4D;
  };
  const [is, plain] = tf.tidy(() => {
    const args = [tf.tensor4d(x0, [n, 2, 3, 1]), tf.tensor1d(ts), tf.tensor4d(z, [n, 2, 3, 1])] as const;
    return [
      dsmLossPerSample(score, sde, ...args, 'likelihood', 0.31, likelihoodWeight(LIK)).dataSync(),
      dsmLossPerSample(score, sde, ...args, 'likelihood').dataSync(),
    ];
  });
  for (let i = 0; i < n; i++) {
    const want = plain[i] / ((1 - LIK.eps) * trainTimeDensity(LIK, ts[i]));
    assert.ok(Math.abs(is[i] - want) <= 1e-4 * want, `t ${ts[i]}: ${is[i]} vs ${want}`);
  }
  assert.throws(
    () => trainConfig({ ...RECIPES.likelihood, weighting: 'sigma2' }),
    /likelihood noise is importance sampling for the likelihood weighting, got weighting sigma2/,
  );
});

test('edm weighting equals EDM lambda(sigma) ||D - x0||^2 at several sigmas', async () => {
  await initBackend('cpu', { log: () => {} });
  const sde = makeSde({ name: 've' });
  const sigmaData = 0.31;
  const n = 4;
  const d = 6;
  // t with std(t) = 0.05, 0.5, 3, 20: std^2 = sigma(t)^2 - sigma_min^2
  const stds = [0.05, 0.5, 3, 20];
  const ts = stds.map((s) => Math.log(Math.sqrt(s * s + 1e-4) / 0.01) / Math.log(2200));
  const x0 = Float32Array.from({ length: n * d }, (_, i) => ((i * 37) % 11) / 11);
  const z = Float32Array.from({ length: n * d }, (_, i) => Math.sin(i * 1.7) * 1.3);
  // any score will do; this one is the exact score of N(0.4, 0.3^2 + std^2) per pixel
  const score = (x: tf.Tensor4D, t: tf.Tensor1D) => {
    const v = sde.stdTensor(t).square().add(0.09).reshape([-1, 1, 1, 1]);
    return x.sub(0.4).neg().div(v) as tf.Tensor4D;
  };
  const got = tf.tidy(() =>
    dsmLossPerSample(score, sde, tf.tensor4d(x0, [n, 2, 3, 1]), tf.tensor1d(ts), tf.tensor4d(z, [n, 2, 3, 1]), 'edm', sigmaData).dataSync(),
  );
  for (let i = 0; i < n; i++) {
    const s = sde.std(ts[i]);
    const lambda = (s * s + sigmaData * sigmaData) / (s * sigmaData) ** 2;
    let sum = 0;
    for (let k = i * d; k < (i + 1) * d; k++) {
      const x = x0[k] + s * z[k];
      const D = x + s * s * (-(x - 0.4) / (0.09 + s * s)); // Tweedie's denoiser from the same score
      sum += (D - x0[k]) ** 2;
    }
    const want = lambda * sum;
    assert.ok(Math.abs(got[i] - want) <= 1e-5 * want, `std ${s}: ${got[i]} vs ${want}`);
  }
});

test('lr schedule: closed-form values, and Adam takes its first step at lrAt(0)', () => {
  // fast: peak 2e-3, linear warm-up over 200 updates, then sqrt(400 / max(k, 400))
  const want: [number, number][] = [
    [0, 1e-5],
    [99, 1e-3],
    [199, 2e-3],
    [300, 2e-3],
    [400, 2e-3],
    [1600, 1e-3],
    [6400, 5e-4],
  ];
  for (const [k, lr] of want) assert.ok(Math.abs(lrAt(FAST, k) - lr) < 1e-15, `step ${k}: ${lrAt(FAST, k)} vs ${lr}`);
  const cos = { lr: 1, lrWarmup: 0, lrDecay: 'cosine' as const, lrDecaySteps: 100 };
  assert.ok(Math.abs(lrAt(cos, 50) - 0.5) < 1e-15);
  assert.ok(Math.abs(lrAt(cos, 25) - (1 + Math.SQRT1_2) / 2) < 1e-15);
  assert.equal(lrAt(cos, 100), 0);
  assert.equal(lrAt(cos, 500), 0);
  // cool-down: linear to 0 over N updates from step S, on top of the rest of the schedule
  const cool = { lr: 1, lrCooldownStart: 10, lrCooldownSteps: 4 };
  for (const [k, c] of [
    [0, 1],
    [9, 1],
    [10, 1],
    [11, 0.75],
    [12, 0.5],
    [13, 0.25],
    [14, 0],
    [1e6, 0],
  ])
    assert.equal(lrAt(cool, k), c, `cool-down, step ${k}`);
  const fastCool = { ...FAST, lrCooldownStart: 1600, lrCooldownSteps: 400 };
  assert.equal(lrAt(fastCool, 1599), lrAt(FAST, 1599));
  assert.ok(Math.abs(lrAt(fastCool, 1700) - 2e-3 * Math.sqrt(400 / 1700) * 0.75) < 1e-15);
  assert.throws(() => trainConfig({ lrCooldownSteps: -1 }), /lr cool-down start and steps must be non-negative integers, got 0 and -1/);
  // the seed recipe: the configured rate itself at every step
  for (const k of [0, 1, 1e6]) assert.equal(lrAt(TRAIN_DEFAULTS, k), TRAIN_DEFAULTS.lr);
  // Adam's first update is lr * g / (|g| + eps): about -lrAt(0) sign(g) per parameter
  const s = newOptimState(new Float32Array(3));
  adamStep(s, Float32Array.of(0.5, -2, 1), FAST);
  const lr0 = lrAt(FAST, 0);
  [-lr0, lr0, -lr0].forEach((want, i) => assert.ok(Math.abs(s.params[i] - want) < 1e-6 * lr0, `parameter ${i}: ${s.params[i]} vs ${want}`));
});

const SMALL = [...TINY_NET, '--limit', '256', '--batch-size', '16', '--backend', 'wasm'];

/** The checkpoints in two run directories hold the same tensors, bit for bit. */
function assertSameTensors(dirA: string, dirB: string): void {
  const a = readSafetensors(join(dirA, 'checkpoint.safetensors'));
  const b = readSafetensors(join(dirB, 'checkpoint.safetensors'));
  assert.deepEqual([...a.tensors.keys()], [...b.tensors.keys()]);
  for (const [name, t] of a.tensors) {
    const u = b.tensors.get(name)!;
    assert.ok(
      Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).equals(
        Buffer.from(u.data.buffer, u.data.byteOffset, u.data.byteLength),
      ),
      `${name} differs`,
    );
  }
}

test('--recipe fast is recorded in the checkpoint, flags override it, and 3 + 3 resumed steps == 6 straight', () => {
  const straight = tempDir();
  const split = tempDir();
  let r = runBin('scoreflow', ['train', '--recipe', 'fast', ...SMALL, '--lr-warmup', '5', '--steps', '6', '--out', straight]);
  assert.equal(r.code, 0, r.stderr);
  r = runBin('scoreflow', ['train', '--recipe', 'fast', ...SMALL, '--lr-warmup', '5', '--steps', '3', '--out', split]);
  assert.equal(r.code, 0, r.stderr);
  r = runBin('scoreflow', ['train', '--resume', '--steps', '6', '--out', split, '--backend', 'wasm', '--data', 'train', '--limit', '256']);
  assert.equal(r.code, 0, r.stderr);
  assertSameTensors(straight, split);
  const { config, state } = loadTrainingCheckpoint(join(split, 'checkpoint.safetensors'));
  assert.equal(state.step, 6);
  assert.equal(config.recipe, 'fast');
  assert.equal(config.batchSize, 16, 'the explicit --batch-size wins over the recipe');
  assert.equal(config.lrWarmup, 5, 'the explicit --lr-warmup wins over the recipe');
  assert.equal(config.model.precond, 'edm');
  assert.equal(config.model.sigmaData, FAST.model.sigmaData);
  for (const k of ['lr', 'lrDecay', 'lrDecaySteps', 'noise', 'pMean', 'pStd', 'weighting', 'sigmaData', 'emaDecay'] as const) {
    assert.equal(config[k], FAST[k], k);
  }
  // and the seed recipe stays the default
  const seedOut = tempDir();
  r = runBin('scoreflow', ['train', ...SMALL, '--steps', '1', '--out', seedOut]);
  assert.equal(r.code, 0, r.stderr);
  const seed = loadTrainingCheckpoint(join(seedOut, 'checkpoint.safetensors')).config;
  assert.deepEqual(
    { ...seed, model: undefined, dataset: undefined, batchSize: undefined },
    { ...TRAIN_DEFAULTS, model: undefined, dataset: undefined, batchSize: undefined },
  );
});

test('--recipe likelihood is recorded in the checkpoint with its noise law and weighting', () => {
  const out = tempDir();
  const r = runBin('scoreflow', ['train', '--recipe', 'likelihood', ...SMALL, '--steps', '2', '--out', out]);
  assert.equal(r.code, 0, r.stderr);
  const { config } = loadTrainingCheckpoint(join(out, 'checkpoint.safetensors'));
  assert.equal(config.recipe, 'likelihood');
  for (const k of ['noise', 'weighting', 'lr', 'lrWarmup', 'lrDecay', 'eps', 'gradClip'] as const) assert.equal(config[k], LIK[k], k);
  assert.ok(LIK.gradClip > 0, 'the recipe clips the gradient');
  assert.equal(config.model.precond, LIK.model.precond);
  // the logged loss is the importance-weighted estimate: finite and positive
  const lines = readFileSync(join(out, 'log.jsonl'), 'utf8').trim().split('\n');
  assert.equal(lines.length, 2);
  for (const l of lines) {
    const { loss, grad_norm } = JSON.parse(l) as { loss: number; grad_norm: number };
    assert.ok(loss > 0 && grad_norm > 0 && Number.isFinite(grad_norm), l);
  }
});

test('--lr-warmup, --lr-decay and --lr-decay-steps set the schedule on any recipe; a decay without its step is one clear line', () => {
  const out = tempDir();
  let r = runBin('scoreflow', [
    'train',
    ...SMALL,
    '--lr-decay',
    'cosine',
    '--lr-decay-steps',
    '4',
    '--lr-warmup',
    '2',
    '--steps',
    '2',
    '--out',
    out,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const { config } = loadTrainingCheckpoint(join(out, 'checkpoint.safetensors'));
  assert.deepEqual([config.recipe, config.lrWarmup, config.lrDecay, config.lrDecaySteps], [TRAIN_DEFAULTS.recipe, 2, 'cosine', 4]);
  for (const bin of ['scoreflow', 'coordinator'] as const) {
    const empty = tempDir();
    r = runBin(bin, [bin === 'scoreflow' ? 'train' : 'start', ...SMALL, '--lr-decay', 'rsqrt', '--steps', '1', '--out', empty]);
    assert.notEqual(r.code, 0);
    const lines = errorLines(r.stderr);
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /lr decay rsqrt needs lrDecaySteps \(--lr-decay-steps\) >= 1, got 0/);
    assert.equal(existsSync(join(empty, 'checkpoint.safetensors')), false);
  }
});

test('--lr-cooldown N ends the run with a linear cool-down; scoreflow train --resume may add one that leaves the updates made so far alone', () => {
  const RESUME = ['--backend', 'wasm', '--data', 'train', '--limit', '256'];
  const train = (args: string[]) => runBin('scoreflow', ['train', ...args]);
  const straight = tempDir();
  let r = train([...SMALL, '--steps', '6', '--lr-cooldown', '3', '--out', straight]);
  assert.equal(r.code, 0, r.stderr);
  const { config } = loadTrainingCheckpoint(join(straight, 'checkpoint.safetensors'));
  assert.deepEqual([config.lrCooldownStart, config.lrCooldownSteps], [3, 3]);
  // 3 steps without a cool-down, resumed to 6 with one from step 3: the straight run, bit for bit
  const split = tempDir();
  r = train([...SMALL, '--steps', '3', '--out', split]);
  assert.equal(r.code, 0, r.stderr);
  r = train(['--resume', '--steps', '6', '--lr-cooldown', '3', '--out', split, ...RESUME]);
  assert.equal(r.code, 0, r.stderr);
  assertSameTensors(straight, split);
  // ... and not the run without one
  const plain = tempDir();
  r = train([...SMALL, '--steps', '6', '--out', plain]);
  assert.equal(r.code, 0, r.stderr);
  assert.throws(() => assertSameTensors(straight, plain), /differs/);
  // refused in one line, the checkpoint untouched: ...
  const refused = (args: string[], why: RegExp, dir?: string) => {
    const res = runBin(args[0] === 'start' ? 'coordinator' : 'scoreflow', args);
    assert.notEqual(res.code, 0);
    const lines = errorLines(res.stderr);
    assert.equal(lines.length, 1, res.stderr);
    assert.match(lines[0], why);
    if (dir) assert.equal(loadTrainingCheckpoint(join(dir, 'checkpoint.safetensors')).state.step, 6);
  };
  // training on past the cool-down's end, where the rate is 0
  refused(['train', '--resume', '--steps', '8', '--out', split, ...RESUME], /cool-down ends at step 6, where the rate is 0/, split);
  // changing a cool-down that has begun
  refused(
    ['train', '--resume', '--steps', '8', '--lr-cooldown', '2', '--out', split, ...RESUME],
    /--lr-cooldown 2: the checkpoint's cool-down \(3 steps from step 3\) began before its step 6 and cannot change/,
    split,
  );
  // a new one that would start before the checkpoint
  refused(
    ['train', '--resume', '--steps', '9', '--lr-cooldown', '4', '--out', plain, ...RESUME],
    /--lr-cooldown 4 would start at step 5, before the checkpoint's step 6: .*give at most 3/,
    plain,
  );
  // longer than the run, from either command
  for (const cmd of ['train', 'start'])
    refused([cmd, ...SMALL, '--steps', '2', '--lr-cooldown', '3', '--out', tempDir()], /--lr-cooldown 3 is longer than the run's 2 steps/);
});

test("coordinator start --lr-cooldown records the cool-down that ends at the run's last step; a restart keeps it", () => {
  const out = tempDir();
  const start = (extra: string[]) => runBin('coordinator', ['start', '--gpus', '1', ...SMALL, '--out', out, ...extra]);
  // 256 images in batches of 16: 16 steps per epoch, so --epochs 1 ends at step 16
  let r = start(['--epochs', '1', '--lr-cooldown', '5', '--ckpt-every', '100']);
  assert.equal(r.code, 0, r.stderr.split('\n').slice(-20).join('\n'));
  const ck = loadTrainingCheckpoint(join(out, 'checkpoint.safetensors'));
  assert.deepEqual([ck.state.step, ck.config.lrCooldownStart, ck.config.lrCooldownSteps], [16, 11, 5]);
  r = start(['--epochs', '2', '--lr-cooldown', '4']);
  assert.notEqual(r.code, 0);
  const lines = errorLines(r.stderr);
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /--lr-cooldown 4 \(the run has 5\)/);
});

test('an unknown recipe is one clear line and a non-zero exit', () => {
  for (const bin of ['scoreflow', 'coordinator'] as const) {
    const r = runBin(bin, bin === 'scoreflow' ? ['train', '--recipe', 'turbo'] : ['start', '--recipe', 'turbo']);
    assert.notEqual(r.code, 0);
    const lines = errorLines(r.stderr);
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /unknown recipe 'turbo' \(expected seed, fast or likelihood\)/);
  }
  assert.throws(
    () => trainConfig({ ...RECIPES.fast, sde: { name: 'vp' } }),
    /lognormal and likelihood noise, edm weighting and edm preconditioning need the VE SDE, got vp/,
  );
});

test('edm preconditioning: s = -x/(std^2 + sd^2) + sd F / (std sqrt(std^2 + sd^2)) with F the reference net output', async () => {
  await initBackend('cpu', { log: () => {} });
  const sde = makeSde({ name: 've' });
  const model = { channels: [8, 16, 16, 16] as [number, number, number, number], embedDim: 16 };
  const ref = new ScoreNet(modelConfig(model), sde);
  const edm = new ScoreNet(modelConfig({ ...model, precond: 'edm', sigmaData: 0.31 }), sde);
  const params = initParams(ref.infos, 3);
  const x = Float32Array.from({ length: 3 * 784 }, (_, i) => Math.sin(i * 0.37) * 2);
  const ts = [0.05, 0.5, 0.95];
  const [a, b] = tf.tidy(() => {
    const p = ref.tensors(params);
    const xs = tf.tensor4d(x, [3, 28, 28, 1]);
    const t = tf.tensor1d(ts);
    return [ref.apply(p, xs, t).dataSync(), edm.apply(p, xs, t).dataSync()];
  });
  for (let i = 0; i < 3; i++) {
    const s = sde.std(ts[i]);
    const v = s * s + 0.31 * 0.31;
    for (let k = i * 784; k < (i + 1) * 784; k += 97) {
      const F = a[k] * s; // the reference divides F by std
      const want = -x[k] / v + (0.31 * F) / (s * Math.sqrt(v));
      assert.ok(Math.abs(b[k] - want) <= 1e-5 * (Math.abs(want) + 1e-3), `t ${ts[i]}, pixel ${k}: ${b[k]} vs ${want}`);
    }
  }
  assert.throws(() => modelConfig({ precond: 'nope' as 'edm' }), /model preconditioning must be std or edm, got nope/);
});
