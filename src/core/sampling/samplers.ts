/**
 * Samplers for the reverse of a linear SDE dx = f(t) x dt + g(t) dw (Song et al. 2021), each a
 * small object with one `step` (as diffusers' schedulers); the loop around them is in index.ts.
 *
 *   reverse SDE           dx = [f(t) x - g2(t) s(x,t)] dt + g(t) dw_bar       (t: 1 -> eps)
 *   probability-flow ODE  dx = [f(t) x - g2(t)/2 s(x,t)] dt
 *
 * State is a float64 array of m rows (one per sample) of d values; `io.score` evaluates all
 * rows at once, each at its own time, and `io.noise()` draws fresh N(0, I) rows from each
 * sample's own stream, so sample i never depends on its batch-mates.
 */
import type { SDE } from '../sde.js';

export interface StepIO {
  m: number;
  d: number;
  /** s(x_j, t_j) for every row j. */
  score(x: Float64Array, t: ArrayLike<number>): Promise<Float32Array>;
  /** The next N(0, I) draw of every row's noise stream (m*d values). */
  noise(): Float64Array;
}

export interface StepSampler {
  readonly name: string;
  /** Iterations of step(). */
  readonly steps: number;
  /** Score evaluations per sample over the whole run. */
  readonly nfe: number;
  /** The sampler's state from x(1) (a prior draw or a given latent); may reuse the array. */
  begin(x1: Float64Array): Float64Array;
  /** Step k = 0..steps-1, in place. */
  step(k: number, x: Float64Array, io: StepIO): Promise<void>;
  /** Samples (at t = eps, or at sigma = 0 for Heun) from the final state. */
  end(x: Float64Array): Float64Array;
}

/** numpy.linspace(1, eps, n). */
export function timeGrid(n: number, eps: number): Float64Array {
  const ts = new Float64Array(n);
  for (let k = 0; k < n; k++) ts[k] = n === 1 ? 1 : 1 + (k * (eps - 1)) / (n - 1);
  return ts;
}

function fill(m: number, v: number): Float64Array {
  return new Float64Array(m).fill(v);
}

/**
 * One Euler–Maruyama step of the reverse SDE from t to t - dt (dt > 0):
 *   mean = x + [g2(t) s(x,t) - f(t) x] dt,   x' = mean + sqrt(g2(t) dt) z,
 * without the noise on the last step (the denoised mean is returned, as the reference).
 */
async function emStep(sde: SDE, t: number, dt: number, x: Float64Array, io: StepIO, last: boolean): Promise<void> {
  const s = await io.score(x, fill(io.m, t));
  const g2 = sde.g2(t);
  const f = sde.f(t);
  for (let q = 0; q < x.length; q++) x[q] += (g2 * s[q] - f * x[q]) * dt;
  if (last) return;
  const z = io.noise();
  const sd = Math.sqrt(g2 * dt);
  for (let q = 0; q < x.length; q++) x[q] += sd * z[q];
}

export class EulerMaruyama implements StepSampler {
  readonly name: string = 'em';
  readonly ts: Float64Array;
  readonly dt: number;
  constructor(
    readonly sde: SDE,
    readonly steps: number,
    readonly eps: number,
  ) {
    this.ts = timeGrid(steps, eps);
    this.dt = this.ts[0] - this.ts[1];
  }
  get nfe(): number {
    return this.steps;
  }
  begin(x1: Float64Array): Float64Array {
    return x1;
  }
  step(k: number, x: Float64Array, io: StepIO): Promise<void> {
    return emStep(this.sde, this.ts[k], this.dt, x, io, k === this.steps - 1);
  }
  end(x: Float64Array): Float64Array {
    return x;
  }
}

/**
 * Predictor–corrector (Song et al. 2021, Alg. 2 as in their code): at each t, first
 * `correctorSteps` Langevin MCMC steps at the fixed noise level t,
 *   x <- x + eta s + sqrt(2 eta) z,   eta = 2 alpha_t (snr ||z|| / ||s||)^2,
 * then one Euler–Maruyama predictor step of the reverse SDE to t - dt. The last predictor
 * step returns its mean.
 *
 * Two deliberate differences from the reference: ||s|| is each sample's own norm (the
 * reference averages it over the batch, which makes sample i depend on its batch-mates and on
 * the batch size; per sample, results are identical however the index range is split), and
 * ||z|| is its expectation sqrt(d) as in the reference. alpha_t = exp(2 f(t) dt) is 1 for VE
 * and the continuous-time form of score_sde's 1 - beta_i for VP / sub-VP.
 */
export class PredictorCorrector extends EulerMaruyama {
  override readonly name: string = 'pc';
  constructor(
    sde: SDE,
    steps: number,
    eps: number,
    readonly snr: number,
    readonly correctorSteps: number,
  ) {
    super(sde, steps, eps);
  }
  override get nfe(): number {
    return this.steps * (this.correctorSteps + 1);
  }
  override async step(k: number, x: Float64Array, io: StepIO): Promise<void> {
    const t = this.ts[k];
    const alpha = Math.exp(2 * this.sde.f(t) * this.dt);
    const noiseNorm = Math.sqrt(io.d);
    for (let c = 0; c < this.correctorSteps; c++) {
      const s = await io.score(x, fill(io.m, t));
      const z = io.noise();
      for (let j = 0; j < io.m; j++) {
        let n2 = 0;
        for (let q = j * io.d; q < (j + 1) * io.d; q++) n2 += s[q] * s[q];
        const gradNorm = Math.sqrt(n2);
        // a zero score (e.g. exactly at a mode of a symmetric density) means no drift: take no step
        const eta = gradNorm > 0 ? 2 * alpha * ((this.snr * noiseNorm) / gradNorm) ** 2 : 0;
        const sd = Math.sqrt(2 * eta);
        for (let q = j * io.d; q < (j + 1) * io.d; q++) x[q] += eta * s[q] + sd * z[q];
      }
    }
    await super.step(k, x, io); // the predictor
  }
}

export interface HeunSettings {
  steps: number;
  rho: number;
  /** EDM's S_churn (0: deterministic Heun on the probability-flow ODE). */
  churn: number;
  sTmin: number;
  sTmax: number;
  sNoise: number;
  eps: number;
}

/**
 * EDM sampler (Karras et al. 2022, Alg. 2): Heun's method on the probability-flow ODE written
 * in noise level sigma, over sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho,
 * i < N, and sigma_N = 0, with optional stochastic churn.
 *
 * Any linear SDE has x(t) = alpha(t) (x(0) + sigma(t) n) with sigma = std/alpha, so in the
 * scaled variable x_hat = x / alpha the flow is EDM's dx_hat/dsigma = -sigma grad log p(x_hat;
 * sigma), and grad_{x_hat} log p = alpha(t) s(alpha x_hat, t). We therefore step x_hat over sigma
 * and evaluate the network at t(sigma), the inverse of sigma(t) = std(t)/alpha(t): for VE this is
 * sigma = std(t) (alpha = 1); for VP / sub-VP it is found by bisection (sigma(t) is increasing).
 * The range is [sigma(eps), sigma(1)], the same noise levels the other samplers visit.
 *
 * Churn: where S_tmin <= sigma_i <= S_tmax, gamma = min(S_churn/N, sqrt2 - 1) raises the noise
 * level to sigma_hat = (1 + gamma) sigma_i by adding sqrt(sigma_hat^2 - sigma_i^2) S_noise z
 * before the step. The last step, to sigma = 0, is a single Euler step, which is exactly
 * Tweedie's denoised mean x_hat + sigma^2 grad log p: no noise is added at the end.
 * NFE = 2N - 1.
 */
export class HeunEdm implements StepSampler {
  readonly name = 'heun';
  readonly sigmas: Float64Array;
  readonly steps: number;
  private readonly alpha1: number;
  constructor(
    readonly sde: SDE,
    readonly cfg: HeunSettings,
  ) {
    this.steps = cfg.steps;
    const sMax = sigmaOf(sde, 1);
    const sMin = sigmaOf(sde, cfg.eps);
    const n = cfg.steps;
    this.sigmas = new Float64Array(n + 1);
    const a = sMax ** (1 / cfg.rho);
    const b = sMin ** (1 / cfg.rho);
    for (let i = 0; i < n; i++) this.sigmas[i] = n === 1 ? sMax : (a + (i / (n - 1)) * (b - a)) ** cfg.rho;
    this.sigmas[n] = 0;
    this.alpha1 = sde.alpha(1);
  }
  get nfe(): number {
    return 2 * this.steps - 1;
  }
  begin(x1: Float64Array): Float64Array {
    for (let q = 0; q < x1.length; q++) x1[q] /= this.alpha1;
    return x1;
  }
  /** dx_hat/dsigma = -sigma alpha(t) s(alpha x_hat, t), t = t(sigma). */
  private async slope(x: Float64Array, sigma: number, io: StepIO): Promise<Float64Array> {
    const t = timeOfSigma(this.sde, sigma);
    const a = this.sde.alpha(t);
    const xa = a === 1 ? x : x.map((v) => v * a);
    const s = await io.score(xa, fill(io.m, t));
    const out = new Float64Array(x.length);
    for (let q = 0; q < x.length; q++) out[q] = -sigma * a * s[q];
    return out;
  }
  async step(i: number, x: Float64Array, io: StepIO): Promise<void> {
    const { churn, sTmin, sTmax, sNoise } = this.cfg;
    const sigma = this.sigmas[i];
    const next = this.sigmas[i + 1];
    const gamma = churn > 0 && sigma >= sTmin && sigma <= sTmax ? Math.min(churn / this.steps, Math.SQRT2 - 1) : 0;
    const sigmaHat = sigma * (1 + gamma);
    if (gamma > 0) {
      const z = io.noise();
      const sd = Math.sqrt(sigmaHat * sigmaHat - sigma * sigma) * sNoise;
      for (let q = 0; q < x.length; q++) x[q] += sd * z[q];
    }
    const d1 = await this.slope(x, sigmaHat, io);
    const h = next - sigmaHat;
    if (next === 0) {
      for (let q = 0; q < x.length; q++) x[q] += h * d1[q];
      return;
    }
    const xe = new Float64Array(x.length);
    for (let q = 0; q < x.length; q++) xe[q] = x[q] + h * d1[q];
    const d2 = await this.slope(xe, next, io);
    for (let q = 0; q < x.length; q++) x[q] += 0.5 * h * (d1[q] + d2[q]);
  }
  end(x: Float64Array): Float64Array {
    return x; // sigma = 0 is t = 0, where alpha = 1
  }
}

/** EDM noise level sigma(t) = std(t) / alpha(t). */
export function sigmaOf(sde: SDE, t: number): number {
  return sde.std(t) / sde.alpha(t);
}

/** Inverse of sigmaOf, t >= 0 (may exceed 1 when churn lifts sigma above sigma(1)). */
export function timeOfSigma(sde: SDE, sigma: number): number {
  if (!(sigma > 0)) return 0;
  if (sde.config.name === 've') {
    // std^2 = sigma_min^2 ((smax/smin)^(2t) - 1)  =>  t = log(1 + std^2/smin^2) / (2 log(smax/smin))
    const { sigmaMin, sigmaMax } = sde.config;
    return Math.log1p((sigma / sigmaMin) ** 2) / (2 * Math.log(sigmaMax / sigmaMin));
  }
  let hi = 1;
  while (sigmaOf(sde, hi) < sigma && hi < 64) hi *= 2;
  let lo = 0;
  for (let it = 0; it < 100 && hi - lo > 1e-15; it++) {
    const mid = 0.5 * (lo + hi);
    if (sigmaOf(sde, mid) < sigma) lo = mid;
    else hi = mid;
  }
  return 0.5 * (lo + hi);
}
