/**
 * Bits/dim through the probability-flow ODE (Song et al. 2021, Sec. 4.3 and App. D.2).
 *
 * The flow dx/dt = F(x, t) = f(t) x - g2(t)/2 s(x, t) maps data x(eps) to z = x(1), and the
 * instantaneous change of variables (Chen et al. 2018) gives
 *   log p_eps(x(eps)) = log p_1(x(1)) + int_eps^1 div F(x(t), t) dt,
 *   div F = f(t) d - g2(t)/2 div s.
 * We integrate the augmented state [x, delta], delta' = div F, from eps to 1 with RK45 and take
 * log p(x) = priorLogp(z) + delta(1), with the SDE's prior standing in for p_1.
 *
 * div s is estimated with Skilling–Hutchinson, div s ~ (1/K) sum_k v_k^T (ds/dx) v_k for fixed
 * probes v_k (Gaussian or Rademacher), or computed exactly as sum_j e_j^T (ds/dx) e_j, one
 * backward pass per dimension (small d only).
 *
 * Bits/dim of 8-bit images: pixels b in {0..255} are dequantised to x = (b + u)/256, u ~ U[0,1)^d,
 * so x lies in the cell [b/256, (b+1)/256)^d of volume 256^-d, and by Jensen
 *   log P(b) >= E_u[log p(x)] - d log 256,
 * i.e. bits/dim = -log p(x) / (d ln 2) + log2(256) = -log p(x) / (d ln 2) + 8, as the reference.
 * (Our data are b/255 in [0,1] and are dequantised from there: (x*255 + u)/256.)
 *
 * Randomness of image i (dequantisation noise, probes) comes from (seed, i) only, and the RK45
 * step control is per image, so per-image values do not depend on batching or on the split.
 */
import { dequantise } from './data/mnist.js';
import { rk45, type Rk45Options } from './ode/rk45.js';
import { Rng, Stream } from './rng.js';
import { BatchScore, type ScoreModel } from './score/batch.js';

export const DIVERGENCE_MODES = ['gaussian', 'rademacher', 'exact'] as const;
export type DivergenceMode = (typeof DIVERGENCE_MODES)[number];

export interface LikelihoodOptions {
  seed: number;
  /** Divergence estimator (default gaussian, as the reference). */
  hutchinson?: DivergenceMode;
  /** Probes K per image (default 1); ignored for exact. */
  probes?: number;
  rtol?: number;
  atol?: number;
  eps?: number;
  /** First RK45 step (default: chosen by the solver, one extra evaluation). */
  firstStep?: number;
  /** Images per batch (default 32). */
  batchSize?: number;
  /** Largest batch handed to the score function; probe replicas count (default 256). */
  maxBatch?: number;
  /** Uniformly dequantise 8-bit data and add log2(levels) bits (default true, 256 levels). */
  dequantise?: boolean;
  /** log p_1(z) per image in place of the SDE's prior (tests use the exact marginal). */
  priorLogp?: (z: Float64Array) => number;
  onProgress?: (done: number, total: number) => void;
}

export interface LikelihoodResult {
  /** Bits/dim per image. */
  bpd: Float64Array;
  /** log p(x) in nats per image (of the dequantised x when dequantising). */
  logp: Float64Array;
  /** Score-function evaluations per image (each a forward + backward pass). */
  nfe: Int32Array;
  calls: number;
}

export function isDivergenceMode(s: string): s is DivergenceMode {
  return (DIVERGENCE_MODES as readonly string[]).includes(s);
}

function resolve(o: LikelihoodOptions) {
  const r = {
    seed: o.seed,
    hutchinson: o.hutchinson ?? 'gaussian',
    probes: o.probes ?? 1,
    rtol: o.rtol ?? 1e-5,
    atol: o.atol ?? 1e-5,
    eps: o.eps ?? 1e-3,
    batchSize: o.batchSize ?? 32,
    maxBatch: o.maxBatch ?? 256,
    dequantise: o.dequantise ?? true,
  };
  if (!Number.isSafeInteger(r.seed) || r.seed < 0) throw new Error(`seed must be a non-negative integer, got ${r.seed}`);
  if (!isDivergenceMode(r.hutchinson))
    throw new Error(`unknown divergence estimator '${String(r.hutchinson)}' (expected ${DIVERGENCE_MODES.join(', ')})`);
  if (!(Number.isSafeInteger(r.probes) && r.probes >= 1)) throw new Error(`probes must be a positive integer, got ${r.probes}`);
  if (!(r.rtol > 0 && Number.isFinite(r.rtol))) throw new Error(`rtol must be positive, got ${r.rtol}`);
  if (!(r.atol > 0 && Number.isFinite(r.atol))) throw new Error(`atol must be positive, got ${r.atol}`);
  if (!(r.eps > 0 && r.eps < 1)) throw new Error(`eps must be in (0, 1), got ${r.eps}`);
  if (!(Number.isSafeInteger(r.batchSize) && r.batchSize >= 1))
    throw new Error(`batch size must be a positive integer, got ${r.batchSize}`);
  if (!(Number.isSafeInteger(r.maxBatch) && r.maxBatch >= 1)) throw new Error(`maxBatch must be a positive integer, got ${r.maxBatch}`);
  return r;
}

/** Probe vectors of image i: K rows of d from Rng(seed, Probe, i), or the d basis vectors for exact. */
export function probesFor(mode: DivergenceMode, seed: number, i: number, k: number, d: number): Float32Array {
  if (mode === 'exact') {
    const e = new Float32Array(d * d);
    for (let j = 0; j < d; j++) e[j * d + j] = 1;
    return e;
  }
  const rng = new Rng(seed, Stream.Probe, i);
  return mode === 'gaussian' ? rng.normal(k * d) : rng.rademacher(k * d);
}

/** The x(eps) of image i: dequantised with u from Rng(seed, Dequantise, i), or as given. */
export function likelihoodInput(images: Float32Array, i: number, d: number, seed: number, deq: boolean): Float32Array {
  const x = images.subarray(i * d, (i + 1) * d);
  return deq ? dequantise(x, new Rng(seed, Stream.Dequantise, i).uniformArray(d)) : Float32Array.from(x);
}

/** Bits/dim of images [from, to) of `images` (n*d values in [0,1], image-major). */
export async function likelihoodRange(
  model: ScoreModel,
  images: Float32Array,
  from: number,
  to: number,
  opts: LikelihoodOptions,
): Promise<LikelihoodResult> {
  const o = resolve(opts);
  const score = new BatchScore(model, o.maxBatch);
  const d = score.d;
  const sde = model.sde;
  if (images.length % d !== 0)
    throw new Error(`images hold ${images.length} values, not whole images of ${d} ([${model.shape.join(',')}])`);
  const n = images.length / d;
  if (!(Number.isSafeInteger(from) && Number.isSafeInteger(to) && 0 <= from && from <= to && to <= n))
    throw new Error(`bad image range [${from}, ${to}) of ${n} images`);
  const k = o.hutchinson === 'exact' ? d : o.probes;
  const weight = o.hutchinson === 'exact' ? 1 : 1 / k;
  const ode: Rk45Options = { rtol: o.rtol, atol: o.atol, h0: opts.firstStep };
  const offsetBits = o.dequantise ? 8 : 0;
  const out: LikelihoodResult = {
    bpd: new Float64Array(to - from),
    logp: new Float64Array(to - from),
    nfe: new Int32Array(to - from),
    calls: 0,
  };
  const dd = d + 1; // augmented state [x, delta]

  for (let a = from; a < to; a += o.batchSize) {
    const b = Math.min(to, a + o.batchSize);
    const m = b - a;
    const y0 = new Float64Array(m * dd);
    const probes = new Float32Array(m * k * d);
    for (let j = 0; j < m; j++) {
      y0.set(likelihoodInput(images, a + j, d, o.seed, o.dequantise), j * dd);
      probes.set(probesFor(o.hutchinson, o.seed, a + j, k, d), j * k * d);
    }
    const r = await rk45(
      async (t, y, ids) => {
        const mm = ids.length;
        const x = new Float64Array(mm * d);
        const p = new Float32Array(mm * k * d);
        ids.forEach((i, j) => {
          x.set(y.subarray(j * dd, j * dd + d), j * d);
          p.set(probes.subarray(i * k * d, (i + 1) * k * d), j * k * d);
        });
        const { score: s, div } = await score.scoreAndDivergence(x, t, p, k, weight);
        const dy = new Float64Array(mm * dd);
        for (let j = 0; j < mm; j++) {
          const f = sde.f(t[j]);
          const hg2 = 0.5 * sde.g2(t[j]);
          for (let q = 0; q < d; q++) dy[j * dd + q] = f * y[j * dd + q] - hg2 * s[j * d + q];
          dy[j * dd + d] = f * d - hg2 * div[j];
        }
        return dy;
      },
      o.eps,
      1,
      y0,
      m,
      ode,
    );
    for (let j = 0; j < m; j++) {
      const z = r.y.subarray(j * dd, j * dd + d);
      const delta = r.y[j * dd + d];
      const prior = opts.priorLogp ? opts.priorLogp(Float64Array.from(z)) : gaussianLogp(z, sde.priorStd());
      const logp = prior + delta;
      out.logp[a - from + j] = logp;
      out.bpd[a - from + j] = -logp / (d * Math.LN2) + offsetBits;
      out.nfe[a - from + j] = r.nfe[j];
    }
    opts.onProgress?.(b - from, to - from);
  }
  out.calls = score.calls;
  return out;
}

/** log N(z; 0, s^2 I) in float64 (the SDE's priorLogp, without a tensor round trip). */
export function gaussianLogp(z: ArrayLike<number>, s: number): number {
  let q = 0;
  for (let i = 0; i < z.length; i++) q += z[i] * z[i];
  return (-z.length / 2) * Math.log(2 * Math.PI * s * s) - q / (2 * s * s);
}

/** Mean and its standard error. */
export function meanAndStderr(v: ArrayLike<number>): { mean: number; stderr: number } {
  const n = v.length;
  if (n === 0) return { mean: NaN, stderr: NaN };
  let s = 0;
  for (let i = 0; i < n; i++) s += v[i];
  const mean = s / n;
  let ss = 0;
  for (let i = 0; i < n; i++) ss += (v[i] - mean) ** 2;
  return { mean, stderr: n > 1 ? Math.sqrt(ss / (n - 1) / n) : NaN };
}
