/**
 * Denoising score matching (Vincent 2011; Song et al. 2021, eq. 7).
 *
 * With x(t) = alpha(t) x(0) + std(t) z, the perturbed score is -z / std(t), so
 *   sigma2 weighting (lambda = std^2, the reference):  l = || s(x(t), t) std + z ||^2
 *   likelihood weighting (lambda = g^2, Song et al. 2021b):  l = g^2(t) || s(x(t), t) + z / std ||^2
 *   edm weighting (Karras et al. 2022, eq. 8), VE only:  l = (1 + std^2 / sigma_data^2) || s(x(t), t) std + z ||^2
 *   likelihood weighting with importance-sampled t (noise.ts, `likelihood` noise): l = c || s(x(t), t) std + z ||^2,
 *     c = Z / (1 - eps), the same expectation as the line above under t ~ U(eps, 1) (derivation in noise.ts)
 * All are summed over pixels; per-sample values are returned so callers can sum any slice.
 *
 * Why the edm line is EDM's loss. For VE, x = x0 + sigma z (sigma = std(t)); EDM's denoiser is
 * Tweedie's D(x; sigma) = x + sigma^2 s(x, sigma), so D - x0 = sigma z + sigma^2 s = sigma (sigma s + z)
 * and EDM's lambda(sigma) || D - x0 ||^2 with lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 is
 *   (sigma^2 + sigma_data^2) / sigma_data^2 * || sigma s + z ||^2,
 * i.e. the sigma2 loss times w(sigma) = 1 + sigma^2 / sigma_data^2. With EDM's log-normal draw of
 * sigma (noise.ts) that is EDM's training objective for a network consumed as a score.
 */
import * as tf from '@tensorflow/tfjs';
import type { SDE } from './sde.js';

export type Weighting = 'sigma2' | 'likelihood' | 'edm';

export type ScoreFn = (x: tf.Tensor4D, t: tf.Tensor1D) => tf.Tensor4D;

/** Per-sample DSM losses [N] for clean images x0 [N,H,W,1], times t [N] and noise z like x0. */
export function dsmLossPerSample(
  score: ScoreFn,
  sde: SDE,
  x0: tf.Tensor4D,
  t: tf.Tensor1D,
  z: tf.Tensor4D,
  weighting: Weighting = 'sigma2',
  sigmaData = 0.31,
  /** With `likelihood` weighting and t from the likelihood noise law: the constant c = Z / (1 - eps). */
  importance?: number,
): tf.Tensor1D {
  const n = x0.shape[0];
  const std = sde.stdTensor(t).reshape([n, 1, 1, 1]);
  const alpha = sde.alphaTensor(t).reshape([n, 1, 1, 1]);
  const xt = x0.mul(alpha).add(z.mul(std)) as tf.Tensor4D;
  const s = score(xt, t);
  if (weighting === 'sigma2') {
    return s.mul(std).add(z).square().reshape([n, -1]).sum(1) as tf.Tensor1D;
  }
  if (weighting === 'likelihood' && importance !== undefined) {
    return s.mul(std).add(z).square().reshape([n, -1]).sum(1).mul(importance) as tf.Tensor1D;
  }
  if (weighting === 'edm') {
    const w = std
      .reshape([n])
      .square()
      .div(sigmaData * sigmaData)
      .add(1);
    return s.mul(std).add(z).square().reshape([n, -1]).sum(1).mul(w) as tf.Tensor1D;
  }
  const g2 = tf.tensor1d(Array.from(t.dataSync(), (ti) => sde.g2(ti)));
  return s.add(z.div(std)).square().reshape([n, -1]).sum(1).mul(g2) as tf.Tensor1D;
}
