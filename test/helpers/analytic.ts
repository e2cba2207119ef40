/**
 * Data distributions whose perturbed score is known in closed form, to test samplers and the
 * likelihood without a network. Under a linear SDE x(t) = alpha(t) x(0) + std(t) n, so
 *   Gaussian N(mu, diag(s0^2))           -> p_t = N(alpha mu, alpha^2 s0^2 + std^2)
 *   mixture sum_k w_k N(m_k, v I)        -> p_t = sum_k w_k N(alpha m_k, (alpha^2 v + std^2) I)
 * Scores are tfjs ops of (x, t) with per-sample t (differentiable, so exact divergences work);
 * log-densities are plain float64 for the checks.
 */
import * as tf from '@tensorflow/tfjs';
import type { SDE } from '../../src/core/sde.js';
import type { DataShape, ScoreModel } from '../../src/core/score/batch.js';

export interface AnalyticModel extends ScoreModel {
  /** log p_t(x) of one sample (d values). */
  logp(t: number, x: ArrayLike<number>): number;
}

function perSample(v: tf.Tensor1D): tf.Tensor4D {
  return v.reshape([-1, 1, 1, 1]);
}

export function gaussianModel(sde: SDE, shape: DataShape, mu: number[], s0: number[]): AnalyticModel {
  const d = shape[0] * shape[1] * shape[2];
  if (mu.length !== d || s0.length !== d) throw new Error(`gaussianModel: need ${d} means and stds`);
  return {
    sde,
    shape,
    score: (x, t) =>
      tf.tidy(() => {
        const a = perSample(sde.alphaTensor(t));
        const s = perSample(sde.stdTensor(t));
        const m = tf.tensor4d(mu, [1, ...shape]);
        const v0 = tf.tensor4d(
          s0.map((v) => v * v),
          [1, ...shape],
        );
        const vt = a.square().mul(v0).add(s.square());
        return x.sub(a.mul(m)).div(vt).neg() as tf.Tensor4D;
      }),
    logp: (t, x) => {
      const a = sde.alpha(t);
      const s = sde.std(t);
      let lp = 0;
      for (let q = 0; q < d; q++) {
        const vt = a * a * s0[q] * s0[q] + s * s;
        lp += -0.5 * Math.log(2 * Math.PI * vt) - (x[q] - a * mu[q]) ** 2 / (2 * vt);
      }
      return lp;
    },
  };
}

export function mixtureModel(sde: SDE, shape: DataShape, weights: [number, number], means: [number[], number[]], v: number): AnalyticModel {
  const d = shape[0] * shape[1] * shape[2];
  if (means.some((m) => m.length !== d)) throw new Error(`mixtureModel: means need ${d} values`);
  const logw = weights.map(Math.log);
  return {
    sde,
    shape,
    score: (x, t) =>
      tf.tidy(() => {
        const n = x.shape[0];
        const a = perSample(sde.alphaTensor(t));
        const s = perSample(sde.stdTensor(t));
        const vt = a.square().mul(v).add(s.square()); // [n,1,1,1]
        const diffs = means.map((m) => x.sub(a.mul(tf.tensor4d(m, [1, ...shape]))));
        // responsibilities r_k = softmax_k(log w_k - |x - alpha m_k|^2 / (2 vt)), equal covariances
        const logits = tf.stack(
          diffs.map((df, k) =>
            tf.sub(
              logw[k],
              df
                .square()
                .reshape([n, -1])
                .sum(1)
                .div(vt.reshape([n]).mul(2)),
            ),
          ),
          1,
        );
        const r = tf.softmax(logits, 1); // [n, 2]
        const mix = diffs.map((df, k) => df.mul(r.slice([0, k], [n, 1]).reshape([n, 1, 1, 1]))).reduce((p, c) => p.add(c));
        return mix.div(vt).neg() as tf.Tensor4D;
      }),
    logp: (t, x) => {
      const a = sde.alpha(t);
      const s = sde.std(t);
      const vt = a * a * v + s * s;
      const terms = means.map((m, k) => {
        let q = 0;
        for (let i = 0; i < d; i++) q += (x[i] - a * m[i]) ** 2;
        return logw[k] - (d / 2) * Math.log(2 * Math.PI * vt) - q / (2 * vt);
      });
      const mx = Math.max(...terms);
      return mx + Math.log(terms.reduce((acc, u) => acc + Math.exp(u - mx), 0));
    },
  };
}
