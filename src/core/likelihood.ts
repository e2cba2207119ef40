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
 * backward pass per dimension (small d only). With K >= 2 probes each probe's integral is its own
 * state component (delta = their mean), so the spread over probes measures the estimator's share
 * of the variance of an image's value.
 *
 * Bits/dim of 8-bit images: pixels b in {0..255} are dequantised to x = (b + u)/256, u ~ U[0,1)^d,
 * so x lies in the cell [b/256, (b+1)/256)^d of volume 256^-d, and by Jensen
 *   log P(b) >= E_u[log p(x)] - d log 256,
 * i.e. bits/dim = -log p(x) / (d ln 2) + log2(256) = -log p(x) / (d ln 2) + 8, as the reference.
 * (Our data are b/255 in [0,1] and are dequantised from there: (x*255 + u)/256.)
 *
 * Truncated-normal dequantisation (`truncnormal`; Zheng et al. 2023, "Improved Techniques for
 * Maximum Likelihood Estimation for Diffusion ODEs", sec. 4): the model was trained on b/255 plus
 * Gaussian noise of std(t) >= std(eps), so at t = eps it is a blur of width s = std(eps) around
 * b/255, while the uniform cell [b/256, (b+1)/256) is off-centre (by half a cell at b = 0, most
 * of MNIST) and flat. Any q(x | b) supported in a cell of a partition gives
 *   log P(b) >= E_q[log p(x)] + H(q)
 * (Jensen; uniform q on a cell of volume 256^-d gives H = -d ln 256, the +8 bits). We take the cells
 * [b/255 - 1/510, b/255 + 1/510) (a partition; width 1/255) and per pixel x = b/255 + s e with e
 * ~ N(0, 1) truncated to [-tau, tau], tau = 1/(510 s), drawn by inversion from the same u as the
 * uniform case: e = Phi^-1(Phi(-tau) + u (Phi(tau) - Phi(-tau))). Its entropy is exact:
 *   H = d [ln(sqrt(2 pi e) s Z) - tau phi(tau) / Z],  Z = 2 Phi(tau) - 1,
 * so bits/dim = -log p(x) / (d ln 2) - H / (d ln 2) (8.076 for VE's s = 1.245e-3, tau = 1.574).
 *
 * Randomness of image i (dequantisation noise, probes) comes from (seed, i) only, and the RK45
 * step control is per image, so image i's arithmetic does not depend on the split or on the other
 * images of its batch. Bit for bit the same values at another batch size also need kernels that
 * give each row the same result at any batch shape: XNNPACK does; libtorch's oneDNN convolutions
 * do not (batch 32 against 64 on 64 MNIST images: 47 values differ, by up to 0.003 bits/dim through
 * the adaptive steps; the means by 7e-5), which is why the fan-out keeps jobs batch-aligned.
 */
import { dequantise } from './data/mnist.js';
import { normalCdf, normalQuantile } from './train/noise.js';
import { rk45, type Rk45Options } from './ode/rk45.js';
import { Rng, Stream } from './rng.js';
import { BatchScore, type ScoreModel } from './score/batch.js';

export const DIVERGENCE_MODES = ['gaussian', 'rademacher', 'exact'] as const;
export type DivergenceMode = (typeof DIVERGENCE_MODES)[number];

export const DEQUANTISATIONS = ['uniform', 'truncnormal', 'none'] as const;
export type Dequantisation = (typeof DEQUANTISATIONS)[number];

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
  /**
   * Dequantisation of 8-bit data (default 'uniform': (x*255 + u)/256 and +8 bits); 'truncnormal':
   * Zheng et al.'s truncated normal around x (file comment); 'none': x as given, no offset.
   */
  dequantise?: Dequantisation;
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
  /**
   * The probes' variance of each image's bits/dim estimate: the sample variance over its K probes
   * of the single-probe estimates, over K (NaN for K = 1; 0 for the exact divergence).
   */
  probeVar: Float64Array;
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
    dequantise: o.dequantise ?? 'uniform',
  };
  if (!(DEQUANTISATIONS as readonly string[]).includes(r.dequantise))
    throw new Error(`unknown dequantisation '${String(r.dequantise)}' (expected ${DEQUANTISATIONS.join(', ')})`);
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

/** The truncated normal of `truncnormal` dequantisation: scale s = std(eps), bound tau = 1/(510 s), entropy per dimension. */
export function truncNormalDequant(s: number): { s: number; tau: number; entropy: number } {
  const tau = 1 / (510 * s);
  const z = 2 * normalCdf(tau) - 1;
  const phi = Math.exp(-0.5 * tau * tau) / Math.sqrt(2 * Math.PI);
  return { s, tau, entropy: Math.log(Math.sqrt(2 * Math.PI * Math.E) * s * z) - (tau * phi) / z };
}

/** -H(q) / ln 2 per dimension: the bits/dim a dequantisation adds to -log p(x) / (d ln 2). */
export function dequantisationBits(deq: Dequantisation, epsStd: number): number {
  if (deq === 'none') return 0;
  if (deq === 'uniform') return 8;
  return -truncNormalDequant(epsStd).entropy / Math.LN2;
}

/** The x(eps) of image i: dequantised with u from Rng(seed, Dequantise, i), or as given; epsStd is std(eps) (truncnormal). */
export function likelihoodInput(images: Float32Array, i: number, d: number, seed: number, deq: Dequantisation, epsStd = 0): Float32Array {
  const x = images.subarray(i * d, (i + 1) * d);
  if (deq === 'none') return Float32Array.from(x);
  const u = new Rng(seed, Stream.Dequantise, i).uniformArray(d);
  if (deq === 'uniform') return dequantise(x, u);
  const { s, tau } = truncNormalDequant(epsStd);
  const lo = normalCdf(-tau);
  const width = 1 - 2 * lo;
  const out = new Float32Array(d);
  for (let k = 0; k < d; k++) {
    const e = Math.max(-tau, Math.min(tau, normalQuantile(lo + u[k] * width)));
    out[k] = x[k] + s * e;
  }
  return out;
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
  const epsStd = sde.std(o.eps);
  const offsetBits = dequantisationBits(o.dequantise, epsStd);
  const out: LikelihoodResult = {
    bpd: new Float64Array(to - from),
    logp: new Float64Array(to - from),
    nfe: new Int32Array(to - from),
    probeVar: new Float64Array(to - from),
    calls: 0,
  };
  // augmented state [x, delta_1..delta_K] (one delta per probe; exact: one delta)
  const kd = o.hutchinson === 'exact' ? 1 : k;
  const dd = d + kd;

  for (let a = from; a < to; a += o.batchSize) {
    const b = Math.min(to, a + o.batchSize);
    const m = b - a;
    const y0 = new Float64Array(m * dd);
    const probes = new Float32Array(m * k * d);
    for (let j = 0; j < m; j++) {
      y0.set(likelihoodInput(images, a + j, d, o.seed, o.dequantise, epsStd), j * dd);
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
        const { score: s, div, probeDiv } = await score.scoreAndDivergence(x, t, p, k, weight, kd > 1);
        const dy = new Float64Array(mm * dd);
        for (let j = 0; j < mm; j++) {
          const f = sde.f(t[j]);
          const hg2 = 0.5 * sde.g2(t[j]);
          for (let q = 0; q < d; q++) dy[j * dd + q] = f * y[j * dd + q] - hg2 * s[j * d + q];
          if (probeDiv) for (let r = 0; r < kd; r++) dy[j * dd + d + r] = f * d - hg2 * probeDiv[j * kd + r];
          else dy[j * dd + d] = f * d - hg2 * div[j];
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
      const deltas = r.y.subarray(j * dd + d, (j + 1) * dd);
      const delta = kd === 1 ? deltas[0] : deltas.reduce((acc, v) => acc + v, 0) / kd;
      const prior = opts.priorLogp ? opts.priorLogp(Float64Array.from(z)) : gaussianLogp(z, sde.priorStd());
      const logp = prior + delta;
      out.logp[a - from + j] = logp;
      out.bpd[a - from + j] = -logp / (d * Math.LN2) + offsetBits;
      // bits/dim is affine in delta: the probes' variance of the mean of K single-probe values
      let pv = o.hutchinson === 'exact' ? 0 : NaN;
      if (kd > 1) {
        let ss = 0;
        for (const v of deltas) ss += (v - delta) ** 2;
        pv = ss / (kd - 1) / kd / (d * Math.LN2) ** 2;
      }
      out.probeVar[a - from + j] = pv;
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
