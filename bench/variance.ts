/**
 * `npm run bench -- --only variance --ckpt PATH [--quick]`: the variance of the likelihood-weighted
 * DSM loss estimate (lambda = g^2) per sample, with t ~ U(eps, 1) against the likelihood recipe's
 * importance-sampled t ~ g^2/std^2 (src/core/train/noise.ts). Both estimate the same number,
 * E_U[g^2 ||s + z/std||^2]; the same images, the same N(0, I) noise draws, the checkpoint's EMA
 * weights and its SDE. Reports both means with standard errors and the variance ratio.
 */
import * as tf from '@tensorflow/tfjs';
import { initBackend, type BackendName } from '../src/core/backend/index.js';
import { loadImages } from '../src/core/data/mnist.js';
import { dsmLossPerSample } from '../src/core/loss.js';
import { meanAndStderr } from '../src/core/likelihood.js';
import { Rng, Stream } from '../src/core/rng.js';
import { loadScoreModel } from '../src/core/score/net.js';
import { likelihoodWeight, trainTime } from '../src/core/train/noise.js';
import { TRAIN_DEFAULTS } from '../src/core/train/config.js';

export async function benchVariance(opts: { ckpt: string; backend: BackendName; quick: boolean }): Promise<unknown> {
  await initBackend(opts.backend, { log: () => {} });
  const model = loadScoreModel(opts.ckpt, { ema: true });
  const sde = model.sde;
  const cfg = { ...TRAIN_DEFAULTS, sde: { ...TRAIN_DEFAULTS.sde, ...sde.config } };
  const n = opts.quick ? 1024 : 8192;
  const batch = 128;
  const images = loadImages('train', { limit: n });
  const d = images.h * images.w;
  const c = likelihoodWeight(cfg);
  const est = { uniform: new Float64Array(n), importance: new Float64Array(n) };
  for (const law of ['uniform', 'likelihood'] as const) {
    for (let a = 0; a < n; a += batch) {
      const m = Math.min(batch, n - a);
      const t = new Float32Array(m);
      const z = new Float32Array(m * d);
      for (let j = 0; j < m; j++) {
        // the same u and z for both laws: only the map from u to t differs
        const rng = new Rng(1, Stream.TrainNoise, 0, a + j);
        t[j] = trainTime({ ...cfg, noise: law }, rng.uniform());
        rng.fillNormal(z.subarray(j * d, (j + 1) * d));
      }
      const l = tf.tidy(() => {
        const x0 = tf.tensor4d(images.data.subarray(a * d, (a + m) * d), [m, images.h, images.w, 1]);
        const args = [model.score, sde, x0, tf.tensor1d(t), tf.tensor4d(z, [m, images.h, images.w, 1]), 'likelihood'] as const;
        return (law === 'uniform' ? dsmLossPerSample(...args) : dsmLossPerSample(...args, 0.31, c)).dataSync();
      });
      (law === 'uniform' ? est.uniform : est.importance).set(l, a);
    }
  }
  model.dispose();
  const u = meanAndStderr(est.uniform);
  const i = meanAndStderr(est.importance);
  return {
    ckpt: opts.ckpt,
    samples: n,
    uniform: { mean: u.mean, stderr: u.stderr, variance: u.stderr ** 2 * n },
    importance: { mean: i.mean, stderr: i.stderr, variance: i.stderr ** 2 * n },
    variance_ratio_uniform_over_importance: (u.stderr / i.stderr) ** 2,
    normaliser_Z: c * (1 - cfg.eps),
  };
}
