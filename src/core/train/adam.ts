/**
 * Adam (Kingma & Ba; PyTorch's formulation), EMA of weights and global-norm clipping on flat
 * float32 vectors. Arithmetic is plain JavaScript (float64, rounded to float32 on store), so
 * every worker that applies the same gradient sum ends with bit-identical state, whatever
 * tensor backend computed the gradient.
 */
import type { NativeAdam } from '../backend/native-adam.js';
import type { TrainConfig } from './config.js';
import { lrAt, type LrConfig } from './schedule.js';
import { NonFiniteError } from './finite.js';

export interface OptimState {
  params: Float32Array;
  m: Float32Array;
  v: Float32Array;
  ema: Float32Array;
  /** Updates applied so far. */
  step: number;
}

/** `lr` is the peak rate; the optional schedule fields (schedule.ts lrAt) scale it per step, none: constant. */
export type AdamSettings = Pick<TrainConfig, 'beta1' | 'beta2' | 'adamEps' | 'emaDecay' | 'gradClip'> & LrConfig;

export function newOptimState(params: Float32Array): OptimState {
  return {
    params,
    m: new Float32Array(params.length),
    v: new Float32Array(params.length),
    ema: params.slice(),
    step: 0,
  };
}

/** The l2 norm of the mean of a gradient sum over `count` samples (1: of g itself), each element rounded to float32 as a stored mean is. */
export function l2norm(g: Float32Array, count = 1): number {
  let s = 0;
  for (let i = 0; i < g.length; i++) {
    const gi = Math.fround(g[i] / count);
    s += gi * gi;
  }
  return Math.sqrt(s);
}

/**
 * One Adam update with the mean of the gradient sum `g` over `count` samples (count 1: g is the
 * mean), then the EMA. The mean is taken element by element inside the update, as float32
 * (f32(g[i] / count): the same bits on every replica that holds the same sum); g is not
 * modified. A non-finite value of g throws NonFiniteError and leaves the state unchanged. Frozen
 * parameters (the Fourier weights) have an identically zero gradient, so m = v = 0 and their
 * update is 0 / (0 + eps) = 0. Returns the L2 norm of the mean gradient before clipping where it
 * was computed (gradClip > 0, or `measure`: one more pass over g, ~1.7 ms per 1M values), else undefined.
 */
export function adamStep(
  s: OptimState,
  g: Float32Array,
  a: AdamSettings,
  native?: NativeAdam,
  count = 1,
  measure = false,
): number | undefined {
  if (g.length !== s.params.length) throw new Error(`gradient has ${g.length} values, parameters ${s.params.length}`);
  if (!(Number.isInteger(count) && count >= 1 && count < 2 ** 24)) throw new Error(`count must be an integer in [1, 2^24), got ${count}`);
  const norm = a.gradClip > 0 || measure ? l2norm(g, count) : undefined;
  const scale = a.gradClip > 0 && norm! > a.gradClip ? a.gradClip / (norm! + 1e-6) : 1;
  const t = s.step + 1;
  const bc1 = 1 - a.beta1 ** t;
  const bc2 = 1 - a.beta2 ** t;
  // the schedule's rate for this update (a function of the step alone, so resume and replicas agree)
  const stepSize = lrAt(a, s.step) / bc1;
  const sqrtBc2 = Math.sqrt(bc2);
  // EMA warm-up as in score_sde (use_num_updates): early averages would otherwise keep a large
  // share of the random initialisation (e^{-k(1-decay)} of it after k steps).
  const decay = Math.min(a.emaDecay, (1 + t) / (10 + t));
  const { params: p, m, v, ema } = s;
  let bad = -1;
  // A backend's native Adam (native-adam.ts nativeAdamFor), when the caller hands one over, gives the same bits.
  if (native !== undefined) {
    bad = native(g, p, m, v, ema, Float64Array.of(scale, a.beta1, a.beta2, stepSize, sqrtBc2, a.adamEps, decay, count));
  } else {
    for (let i = 0; i < g.length && bad < 0; i++) if (!Number.isFinite(g[i])) bad = i;
    if (bad < 0) {
      const { beta1: b1, beta2: b2, adamEps: eps } = a;
      const c1 = 1 - b1;
      const c2 = 1 - b2;
      const cd = 1 - decay;
      const f32 = Math.fround;
      for (let i = 0; i < p.length; i++) {
        const gi = f32(g[i] / count) * scale;
        const mi = (m[i] = b1 * m[i] + c1 * gi);
        const vi = (v[i] = b2 * v[i] + c2 * gi * gi);
        // PyTorch: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps), with m and v as stored (float32)
        const pi = (p[i] = f32(p[i] - (stepSize * f32(mi)) / (Math.sqrt(f32(vi)) / sqrtBc2 + eps)));
        ema[i] = decay > 0 ? decay * ema[i] + cd * pi : pi;
      }
    }
  }
  if (bad >= 0) throw new NonFiniteError(`non-finite gradient at step ${s.step} (index ${bad}); state left unchanged`);
  s.step = t;
  return norm;
}
