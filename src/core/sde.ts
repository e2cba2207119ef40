/**
 * Linear SDEs dx = f(t) x dt + g(t) dw (Song et al. 2021), behind one interface.
 *
 * All three SDEs used in the paper have a drift that is linear in x, so each is
 * fully described by scalar functions of t:
 *   f(t)     drift coefficient,            drift(x, t) = f(t) x
 *   g2(t)    squared diffusion g(t)^2
 *   alpha(t) marginal mean coefficient,    E[x(t) | x(0)] = alpha(t) x(0)
 *   std(t)   marginal standard deviation of p_0t(x(t) | x(0))
 * Tensor versions of alpha and std (per-sample t) feed the model and the loss.
 */
import * as tf from '@tensorflow/tfjs';

export type SdeName = 've' | 'vp' | 'subvp';

export interface SdeConfig {
  name: SdeName;
  /** VE: sigma_min, sigma_max. */
  sigmaMin?: number;
  sigmaMax?: number;
  /** VP / sub-VP: beta_min, beta_max. */
  betaMin?: number;
  betaMax?: number;
}

export interface SDE {
  readonly config: Required<SdeConfig>;
  /** Integration ends at T = 1. */
  readonly T: number;
  f(t: number): number;
  g2(t: number): number;
  alpha(t: number): number;
  std(t: number): number;
  /** Per-sample marginal std for a [N] tensor of times. */
  stdTensor(t: tf.Tensor1D): tf.Tensor1D;
  alphaTensor(t: tf.Tensor1D): tf.Tensor1D;
  /** Standard deviation of the prior p_T (isotropic, zero mean). */
  priorStd(): number;
  /** log N(z; 0, priorStd^2 I) for each row of z, summed over all but the first axis. */
  priorLogp(z: tf.Tensor): tf.Tensor1D;
}

export const SDE_DEFAULTS: Required<SdeConfig> = {
  name: 've',
  sigmaMin: 0.01,
  sigmaMax: 22,
  betaMin: 0.1,
  betaMax: 20,
};

abstract class LinearSde implements SDE {
  readonly T = 1;
  constructor(readonly config: Required<SdeConfig>) {}
  abstract f(t: number): number;
  abstract g2(t: number): number;
  abstract alpha(t: number): number;
  abstract std(t: number): number;
  abstract stdTensor(t: tf.Tensor1D): tf.Tensor1D;
  abstract alphaTensor(t: tf.Tensor1D): tf.Tensor1D;
  abstract priorStd(): number;

  priorLogp(z: tf.Tensor): tf.Tensor1D {
    return tf.tidy(() => {
      const n = z.shape[0];
      const flat = z.reshape([n, -1]);
      const d = flat.shape[1] as number;
      const s2 = this.priorStd() ** 2;
      const quad = flat
        .square()
        .sum(1)
        .div(2 * s2);
      return tf.scalar((-d / 2) * Math.log(2 * Math.PI * s2)).sub(quad) as tf.Tensor1D;
    });
  }
}

/** Variance exploding: sigma(t) = sigma_min (sigma_max/sigma_min)^t, no drift. */
export class VESDE extends LinearSde {
  private readonly logRatio: number;
  constructor(config: Required<SdeConfig>) {
    super(config);
    if (!(config.sigmaMin > 0 && config.sigmaMax > config.sigmaMin)) {
      throw new Error(`VE SDE needs 0 < sigma_min < sigma_max, got ${config.sigmaMin}, ${config.sigmaMax}`);
    }
    this.logRatio = Math.log(config.sigmaMax / config.sigmaMin);
  }
  sigma(t: number): number {
    return this.config.sigmaMin * Math.exp(t * this.logRatio);
  }
  f(): number {
    return 0;
  }
  /** g^2 = d sigma^2 / dt = 2 sigma^2 log(sigma_max / sigma_min). */
  g2(t: number): number {
    return 2 * this.sigma(t) ** 2 * this.logRatio;
  }
  alpha(): number {
    return 1;
  }
  /** std of x(t)|x(0) = sqrt(sigma(t)^2 - sigma(0)^2), exactly as the reference. */
  std(t: number): number {
    return Math.sqrt(this.sigma(t) ** 2 - this.config.sigmaMin ** 2);
  }
  stdTensor(t: tf.Tensor1D): tf.Tensor1D {
    return tf.tidy(() => {
      const smin = this.config.sigmaMin;
      const sigma = tf.exp(t.mul(this.logRatio)).mul(smin);
      return sigma
        .square()
        .sub(smin * smin)
        .sqrt() as tf.Tensor1D;
    });
  }
  alphaTensor(t: tf.Tensor1D): tf.Tensor1D {
    return tf.onesLike(t);
  }
  priorStd(): number {
    return this.std(1);
  }
}

/** Variance preserving: beta(t) linear from beta_min to beta_max. */
export class VPSDE extends LinearSde {
  constructor(config: Required<SdeConfig>) {
    super(config);
    if (!(config.betaMin > 0 && config.betaMax > config.betaMin)) {
      throw new Error(`VP SDE needs 0 < beta_min < beta_max, got ${config.betaMin}, ${config.betaMax}`);
    }
  }
  beta(t: number): number {
    return this.config.betaMin + t * (this.config.betaMax - this.config.betaMin);
  }
  /** log alpha(t) = -t^2 (beta_max - beta_min)/4 - t beta_min / 2. */
  logAlpha(t: number): number {
    const { betaMin, betaMax } = this.config;
    return -0.25 * t * t * (betaMax - betaMin) - 0.5 * t * betaMin;
  }
  protected logAlphaTensor(t: tf.Tensor1D): tf.Tensor1D {
    const { betaMin, betaMax } = this.config;
    return t
      .square()
      .mul(-0.25 * (betaMax - betaMin))
      .sub(t.mul(0.5 * betaMin)) as tf.Tensor1D;
  }
  f(t: number): number {
    return -0.5 * this.beta(t);
  }
  g2(t: number): number {
    return this.beta(t);
  }
  alpha(t: number): number {
    return Math.exp(this.logAlpha(t));
  }
  std(t: number): number {
    return Math.sqrt(-Math.expm1(2 * this.logAlpha(t)));
  }
  stdTensor(t: tf.Tensor1D): tf.Tensor1D {
    return tf.tidy(() => tf.sub(1, tf.exp(this.logAlphaTensor(t).mul(2))).sqrt() as tf.Tensor1D);
  }
  alphaTensor(t: tf.Tensor1D): tf.Tensor1D {
    return tf.tidy(() => tf.exp(this.logAlphaTensor(t)) as tf.Tensor1D);
  }
  priorStd(): number {
    return 1;
  }
}

/** sub-VP: same drift and mean as VP, g^2 = beta(t)(1 - exp(-2 int beta)), std = 1 - alpha^2. */
export class SubVPSDE extends VPSDE {
  override g2(t: number): number {
    const { betaMin, betaMax } = this.config;
    return this.beta(t) * -Math.expm1(-2 * betaMin * t - (betaMax - betaMin) * t * t);
  }
  override std(t: number): number {
    return -Math.expm1(2 * this.logAlpha(t));
  }
  override stdTensor(t: tf.Tensor1D): tf.Tensor1D {
    return tf.tidy(() => tf.sub(1, tf.exp(this.logAlphaTensor(t).mul(2))) as tf.Tensor1D);
  }
}

export function makeSde(config: SdeConfig = { name: 've' }): SDE {
  const full = { ...SDE_DEFAULTS, ...stripUndefined(config) } as Required<SdeConfig>;
  switch (full.name) {
    case 've':
      return new VESDE(full);
    case 'vp':
      return new VPSDE(full);
    case 'subvp':
      return new SubVPSDE(full);
    default:
      throw new Error(`unknown SDE '${String(full.name)}' (expected ve, vp or subvp)`);
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
