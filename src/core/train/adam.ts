/**
 * Adam (Kingma & Ba; PyTorch's formulation), EMA of weights and global-norm clipping on flat
 * float32 vectors. Arithmetic is plain JavaScript (float64, rounded to float32 on store), so
 * every worker that applies the same mean gradient ends with bit-identical state, whatever
 * tensor backend computed the gradient.
 */
import type { TrainConfig } from './config.js';

export interface OptimState {
  params: Float32Array;
  m: Float32Array;
  v: Float32Array;
  ema: Float32Array;
  /** Updates applied so far. */
  step: number;
}

export type AdamSettings = Pick<TrainConfig, 'lr' | 'beta1' | 'beta2' | 'adamEps' | 'emaDecay' | 'gradClip'>;

export function newOptimState(params: Float32Array): OptimState {
  return {
    params,
    m: new Float32Array(params.length),
    v: new Float32Array(params.length),
    ema: params.slice(),
    step: 0,
  };
}

export function l2norm(g: Float32Array): number {
  let s = 0;
  for (let i = 0; i < g.length; i++) s += g[i] * g[i];
  return Math.sqrt(s);
}

/**
 * One Adam update with mean gradient g (not modified). Frozen parameters (the Fourier weights)
 * have an identically zero gradient, so m = v = 0 and their update is 0 / (0 + eps) = 0.
 */
export function adamStep(s: OptimState, g: Float32Array, a: AdamSettings): void {
  if (g.length !== s.params.length) throw new Error(`gradient has ${g.length} values, parameters ${s.params.length}`);
  const norm = a.gradClip > 0 ? l2norm(g) : 0;
  const scale = a.gradClip > 0 && norm > a.gradClip ? a.gradClip / (norm + 1e-6) : 1;
  const t = s.step + 1;
  const bc1 = 1 - a.beta1 ** t;
  const bc2 = 1 - a.beta2 ** t;
  const stepSize = a.lr / bc1;
  const sqrtBc2 = Math.sqrt(bc2);
  const { params: p, m, v, ema } = s;
  // EMA warm-up as in score_sde (use_num_updates): early averages would otherwise keep a large
  // share of the random initialisation (e^{-k(1-decay)} of it after k steps).
  const decay = Math.min(a.emaDecay, (1 + t) / (10 + t));
  for (let i = 0; i < p.length; i++) {
    const gi = g[i] * scale;
    m[i] = a.beta1 * m[i] + (1 - a.beta1) * gi;
    v[i] = a.beta2 * v[i] + (1 - a.beta2) * gi * gi;
    // PyTorch: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
    p[i] -= (stepSize * m[i]) / (Math.sqrt(v[i]) / sqrtBc2 + a.adamEps);
  }
  if (decay > 0) {
    for (let i = 0; i < p.length; i++) ema[i] = decay * ema[i] + (1 - decay) * p[i];
  } else {
    ema.set(p);
  }
  s.step = t;
}
