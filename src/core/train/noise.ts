/**
 * How training draws its diffusion times t: a plain function of (config, uniform draw). (The other
 * per-step piece of a recipe, the learning-rate schedule, is schedule.ts.)
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
 *
 * `likelihood` (the likelihood recipe; Song, Durkan, Murray & Ermon 2021, sec. 5, derived here for
 * VE): importance sampling for the weighting lambda(t) = g(t)^2, t ~ p(t) = g^2(t) / (std^2(t) Z)
 * on [eps, 1]. For VE, std^2(t) = sigma(t)^2 - sigma_min^2 (sde.ts), so d std^2/dt = d sigma^2/dt = g^2
 * and g^2 / std^2 = d ln std^2 / dt: ln std^2(t) is uniform, i.e. std is log-uniform on
 * [std(eps), std(1)]. Hence
 *   Z    = int_eps^1 g^2/std^2 dt = ln(std^2(1) / std^2(eps))   (finite only for eps > 0: std(0) = 0,
 *          so the integrand ~ 1/t at 0 and Z grows like -ln eps; eps = 1e-3 gives Z = 19.56),
 *   F(t) = ln(std^2(t) / std^2(eps)) / Z,
 *   t    = F^-1(u) = ln(1 + std^2(eps) (std^2(1)/std^2(eps))^u / sigma_min^2) / (2 ln(sigma_max/sigma_min)),
 * with no atoms. The loss estimates the same objective as lambda = g^2 under t ~ U(eps, 1), i.e.
 * E_U[g^2 ||s + z/std||^2] = E_p[g^2 ||s + z/std||^2 / ((1 - eps) p(t))], and since
 * g^2 ||s + z/std||^2 = (g^2/std^2) ||std s + z||^2 the per-sample term is
 *   Z / (1 - eps) * ||std s + z||^2   (likelihoodWeight),
 * the seed recipe's sigma2 loss times a constant: no g^2 spanning 10 decades in one batch.
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

/** VE std^2(t) = sigma(t)^2 - sigma_min^2 = sigma_min^2 expm1(2 t ln(sigma_max/sigma_min)), accurate near 0. */
function veStd2(sde: NoiseConfig['sde'], t: number): number {
  return sde.sigmaMin ** 2 * Math.expm1(2 * t * Math.log(sde.sigmaMax / sde.sigmaMin));
}

/** Z = int_eps^1 g^2/std^2 dt = ln(std^2(1)/std^2(eps)), the normaliser of the likelihood noise law (VE). */
export function likelihoodNormaliser(cfg: Pick<TrainConfig, 'eps' | 'sde'>): number {
  return Math.log(veStd2(cfg.sde, 1) / veStd2(cfg.sde, cfg.eps));
}

/** The constant Z / (1 - eps) that turns the sigma2 loss into the importance-sampled g^2-weighted one. */
export function likelihoodWeight(cfg: Pick<TrainConfig, 'eps' | 'sde'>): number {
  return likelihoodNormaliser(cfg) / (1 - cfg.eps);
}

/** The density of t under a noise law on (eps, 1) where it has one (uniform, likelihood). */
export function trainTimeDensity(cfg: NoiseConfig, t: number): number {
  if (t < cfg.eps || t > 1) return 0;
  if (cfg.noise === 'uniform') return 1 / (1 - cfg.eps);
  if (cfg.noise !== 'likelihood') throw new Error(`no closed-form density for ${cfg.noise} noise`);
  const L = Math.log(cfg.sde.sigmaMax / cfg.sde.sigmaMin);
  // g^2/std^2 = 2 L sigma^2 / (sigma^2 - sigma_min^2) = 2 L / (1 - exp(-2 L t))
  return (2 * L) / -Math.expm1(-2 * L * t) / likelihoodNormaliser(cfg);
}

/** The training time of one sample from its uniform draw u in [0, 1) (see the file comment). */
export function trainTime(cfg: NoiseConfig, u: number): number {
  if (cfg.noise === 'uniform') return cfg.eps + (1 - cfg.eps) * u;
  if (cfg.noise === 'likelihood') {
    const { sigmaMin, sigmaMax } = cfg.sde;
    const std2 = veStd2(cfg.sde, cfg.eps) * Math.exp(u * likelihoodNormaliser(cfg));
    const t = Math.log1p(std2 / sigmaMin ** 2) / (2 * Math.log(sigmaMax / sigmaMin));
    return Math.min(1, Math.max(cfg.eps, t)); // rounding only
  }
  const { sigmaMin, sigmaMax } = cfg.sde;
  const t = (cfg.pMean + cfg.pStd * normalQuantile(u) - Math.log(sigmaMin)) / Math.log(sigmaMax / sigmaMin);
  return Math.min(1, Math.max(cfg.eps, t));
}

/** P(t_train <= t) in closed form, for tests and docs. */
export function trainTimeCdf(cfg: NoiseConfig, t: number): number {
  if (t < cfg.eps) return 0;
  if (t >= 1) return 1;
  if (cfg.noise === 'uniform') return (t - cfg.eps) / (1 - cfg.eps);
  if (cfg.noise === 'likelihood') return Math.log(veStd2(cfg.sde, t) / veStd2(cfg.sde, cfg.eps)) / likelihoodNormaliser(cfg);
  const { sigmaMin, sigmaMax } = cfg.sde;
  const logSigma = Math.log(sigmaMin) + t * Math.log(sigmaMax / sigmaMin);
  return normalCdf((logSigma - cfg.pMean) / cfg.pStd);
}
