/**
 * How training draws its diffusion times t, and the learning-rate schedule: the two pieces of a
 * recipe that are plain functions of (config, uniform draw) and (config, step).
 *
 * Noise levels. `uniform` (the seed recipe, Song et al.'s notebook): t ~ U(eps, 1).
 * `lognormal` (EDM, Karras et al. 2022, sec. 5): the noise level sigma = exp(N(P_mean, P_std^2)),
 * mapped to t by inverting the VE schedule sigma(t) = sigma_min (sigma_max/sigma_min)^t,
 *   t = (ln sigma - ln sigma_min) / ln(sigma_max/sigma_min),
 * then clipped to [eps, 1]. Drawn by inversion from the one uniform u of sample j of step k
 * (stream (seed, TrainNoise, k, j), as before): ln sigma = P_mean + P_std Phi^-1(u). So the
 * stream layout is the seed recipe's, t stays a function of (seed, step, index), and the CDF of t is
 *   F(t) = Phi((ln sigma(t) - P_mean) / P_std)   for eps <= t < 1, F(1) = 1,
 * with the clipped mass as atoms at eps (F(eps) > 0) and at 1.
 */
import type { TrainConfig } from './config.js';

/**
 * Phi^-1(p), the standard normal quantile, for p in [0, 1]: Acklam's rational approximation,
 * relative error below 1.2e-9 over (0, 1), far below the float32 resolution t is stored at.
 */
export function normalQuantile(p: number): number {
  if (p === 0) return -Infinity;
  if (p === 1) return Infinity;
  if (!(p > 0 && p < 1)) throw new Error(`normal quantile needs p in [0, 1], got ${p}`);
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const tail = (q: number) =>
    (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  const lo = 0.02425;
  if (p < lo) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - lo) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5;
  const r = q * q;
  return (
    ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q) /
    (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
  );
}

/** erfc(x): Numerical Recipes' Chebyshev fit (erfcc), fractional error below 1.2e-7 everywhere. */
export function erfc(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const poly =
    -1.26551223 +
    t *
      (1.00002368 +
        t *
          (0.37409196 +
            t *
              (0.09678418 +
                t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
  const r = t * Math.exp(-z * z + poly);
  return x >= 0 ? r : 2 - r;
}

/** Standard normal CDF. */
export function normalCdf(x: number): number {
  return 0.5 * erfc(-x / Math.SQRT2);
}

type NoiseConfig = Pick<TrainConfig, 'noise' | 'pMean' | 'pStd' | 'eps' | 'sde'>;

/** The training time of one sample from its uniform draw u in [0, 1) (see the file comment). */
export function trainTime(cfg: NoiseConfig, u: number): number {
  if (cfg.noise === 'uniform') return cfg.eps + (1 - cfg.eps) * u;
  const { sigmaMin, sigmaMax } = cfg.sde;
  const t = (cfg.pMean + cfg.pStd * normalQuantile(u) - Math.log(sigmaMin)) / Math.log(sigmaMax / sigmaMin);
  return Math.min(1, Math.max(cfg.eps, t));
}

/** P(t_train <= t) in closed form, for tests and docs. */
export function trainTimeCdf(cfg: NoiseConfig, t: number): number {
  if (t < cfg.eps) return 0;
  if (t >= 1) return 1;
  if (cfg.noise === 'uniform') return (t - cfg.eps) / (1 - cfg.eps);
  const { sigmaMin, sigmaMax } = cfg.sde;
  const logSigma = Math.log(sigmaMin) + t * Math.log(sigmaMax / sigmaMin);
  return normalCdf((logSigma - cfg.pMean) / cfg.pStd);
}

type LrConfig = Partial<Pick<TrainConfig, 'lrWarmup' | 'lrDecay' | 'lrDecaySteps'>> & Pick<TrainConfig, 'lr'>;

/**
 * The learning rate of the update that follows `done` updates (0 for the first):
 *   lr * w(done) * d(done),  w = min(1, (done + 1) / W) (linear warm-up over W steps; W = 0: none),
 *   d = 1 (constant), sqrt(D / max(done, D)) (rsqrt: EDM2's horizon-free decay after D steps), or
 *   (1 + cos(pi min(done, D) / D)) / 2 (cosine to 0 at step D).
 * With no warm-up and no decay it returns cfg.lr itself, so the seed recipe's updates are unchanged.
 */
export function lrAt(cfg: LrConfig, done: number): number {
  const warm = cfg.lrWarmup ?? 0;
  const decay = cfg.lrDecay ?? 'constant';
  if (warm === 0 && decay === 'constant') return cfg.lr;
  const w = warm > 0 ? Math.min(1, (done + 1) / warm) : 1;
  const D = cfg.lrDecaySteps ?? 0;
  let d = 1;
  if (decay === 'rsqrt') d = Math.sqrt(D / Math.max(done, D));
  else if (decay === 'cosine') d = (1 + Math.cos((Math.PI * Math.min(done, D)) / D)) / 2;
  return cfg.lr * w * d;
}
