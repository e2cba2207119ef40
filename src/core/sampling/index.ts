/**
 * Sampling: noise -> data with any of the samplers, over an index range, batch by batch.
 *
 * Reproducibility contract (the job fan-out relies on it): everything random in sample i comes
 * from streams named by (seed, i): its prior draw from Rng(seed, SamplePrior, i) and its step
 * noise from one stream Rng(seed, SampleNoise, i) advanced step by step; every step and every
 * ODE step-size decision is per sample. So sample i is the same whether it is generated alone,
 * in a batch of 8, or as part of range [3, 7) or [0, 8) (bit for bit with a score function
 * that is itself batch-invariant, as elementwise closed forms are).
 */
import { rk45, type Rk45Options } from '../ode/rk45.js';
import { Rng, Stream } from '../rng.js';
import { EulerMaruyama, HeunEdm, PredictorCorrector, type StepIO, type StepSampler } from './samplers.js';
import { BatchScore, type ScoreModel } from '../score/batch.js';

export { BatchScore, dimOf, type DataShape, type ScoreModel } from '../score/batch.js';
export { EulerMaruyama, HeunEdm, PredictorCorrector, sigmaOf, timeGrid, timeOfSigma, type StepIO, type StepSampler } from './samplers.js';

export const SAMPLER_NAMES = ['em', 'pc', 'ode', 'heun'] as const;
export type SamplerName = (typeof SAMPLER_NAMES)[number];

export interface SampleOptions {
  sampler: SamplerName;
  /** Base seed of every random stream. */
  seed: number;
  /** em / pc: time steps (default 500); heun: noise levels N (default 50, NFE 2N-1 = 99). */
  steps?: number;
  /** Integration ends at t = eps (default 1e-3). */
  eps?: number;
  /** pc: Langevin signal-to-noise ratio (default 0.16) and corrector steps per time step (default 1). */
  snr?: number;
  correctorSteps?: number;
  /** ode: RK45 tolerances (default 1e-5 both). */
  rtol?: number;
  atol?: number;
  /** ode: first step size (default: chosen by the solver, one extra evaluation). */
  firstStep?: number;
  /** heun: EDM's rho and churn (S_churn, S_tmin, S_tmax, S_noise). */
  rho?: number;
  churn?: number;
  sTmin?: number;
  sTmax?: number;
  sNoise?: number;
  /** Samples per batch (default 64). */
  batchSize?: number;
  /** x(1) rows for every index from 0 (n*d values) in place of prior draws (ode: decode a latent). */
  latent?: Float32Array;
  /** Called with (samples done, possibly fractional within a batch, total) as sampling progresses. */
  onProgress?: (done: number, total: number) => void;
}

/** Defaults of the Heun/EDM sampler; see the README for how they were chosen. */
export const HEUN_DEFAULTS = { steps: 50, rho: 7, churn: 50, sTmin: 0.01, sTmax: 5, sNoise: 1 } as const;

export const SAMPLE_DEFAULTS = {
  eps: 1e-3,
  emSteps: 500,
  snr: 0.16,
  correctorSteps: 1,
  rtol: 1e-5,
  atol: 1e-5,
  batchSize: 64,
} as const;

export type ResolvedSampleOptions = Required<Omit<SampleOptions, 'latent' | 'onProgress' | 'firstStep'>> &
  Pick<SampleOptions, 'latent' | 'onProgress' | 'firstStep'>;

export function isSamplerName(s: string): s is SamplerName {
  return (SAMPLER_NAMES as readonly string[]).includes(s);
}

/** Fill defaults and validate; errors are one line naming the option. */
export function resolveSampleOptions(o: SampleOptions): ResolvedSampleOptions {
  if (!isSamplerName(o.sampler)) throw new Error(`unknown sampler '${String(o.sampler)}' (expected ${SAMPLER_NAMES.join(', ')})`);
  const heun = o.sampler === 'heun';
  const r: ResolvedSampleOptions = {
    sampler: o.sampler,
    seed: o.seed,
    steps: o.steps ?? (heun ? HEUN_DEFAULTS.steps : SAMPLE_DEFAULTS.emSteps),
    eps: o.eps ?? SAMPLE_DEFAULTS.eps,
    snr: o.snr ?? SAMPLE_DEFAULTS.snr,
    correctorSteps: o.correctorSteps ?? SAMPLE_DEFAULTS.correctorSteps,
    rtol: o.rtol ?? SAMPLE_DEFAULTS.rtol,
    atol: o.atol ?? SAMPLE_DEFAULTS.atol,
    rho: o.rho ?? HEUN_DEFAULTS.rho,
    churn: o.churn ?? HEUN_DEFAULTS.churn,
    sTmin: o.sTmin ?? HEUN_DEFAULTS.sTmin,
    sTmax: o.sTmax ?? HEUN_DEFAULTS.sTmax,
    sNoise: o.sNoise ?? HEUN_DEFAULTS.sNoise,
    batchSize: o.batchSize ?? SAMPLE_DEFAULTS.batchSize,
    firstStep: o.firstStep,
    latent: o.latent,
    onProgress: o.onProgress,
  };
  const minSteps = heun ? 1 : 2;
  if (!Number.isSafeInteger(r.seed) || r.seed < 0) throw new Error(`seed must be a non-negative integer, got ${r.seed}`);
  if (!(Number.isSafeInteger(r.steps) && r.steps >= minSteps))
    throw new Error(`steps must be an integer >= ${minSteps} for the ${r.sampler} sampler, got ${r.steps}`);
  if (!(r.eps > 0 && r.eps < 1)) throw new Error(`eps must be in (0, 1), got ${r.eps}`);
  if (!(r.snr > 0 && Number.isFinite(r.snr))) throw new Error(`snr must be positive, got ${r.snr}`);
  if (!(Number.isSafeInteger(r.correctorSteps) && r.correctorSteps >= 0))
    throw new Error(`corrector steps must be a non-negative integer, got ${r.correctorSteps}`);
  if (!(r.rtol > 0 && Number.isFinite(r.rtol))) throw new Error(`rtol must be positive, got ${r.rtol}`);
  if (!(r.atol > 0 && Number.isFinite(r.atol))) throw new Error(`atol must be positive, got ${r.atol}`);
  if (r.firstStep !== undefined && !(r.firstStep > 0)) throw new Error(`first step must be positive, got ${r.firstStep}`);
  if (!(r.rho > 0 && Number.isFinite(r.rho))) throw new Error(`rho must be positive, got ${r.rho}`);
  if (!(r.churn >= 0 && Number.isFinite(r.churn))) throw new Error(`churn must be >= 0, got ${r.churn}`);
  if (!(r.sTmin >= 0 && r.sTmax >= r.sTmin)) throw new Error(`need 0 <= S_tmin <= S_tmax, got ${r.sTmin}, ${r.sTmax}`);
  if (!(r.sNoise > 0 && Number.isFinite(r.sNoise))) throw new Error(`S_noise must be positive, got ${r.sNoise}`);
  if (!(Number.isSafeInteger(r.batchSize) && r.batchSize >= 1))
    throw new Error(`batch size must be a positive integer, got ${r.batchSize}`);
  return r;
}

/** The stepwise sampler for options (ode has none: it is adaptive). */
export function makeStepSampler(model: ScoreModel, o: ResolvedSampleOptions): StepSampler {
  switch (o.sampler) {
    case 'em':
      return new EulerMaruyama(model.sde, o.steps, o.eps);
    case 'pc':
      return new PredictorCorrector(model.sde, o.steps, o.eps, o.snr, o.correctorSteps);
    case 'heun':
      return new HeunEdm(model.sde, {
        steps: o.steps,
        rho: o.rho,
        churn: o.churn,
        sTmin: o.sTmin,
        sTmax: o.sTmax,
        sNoise: o.sNoise,
        eps: o.eps,
      });
    case 'ode':
      throw new Error('the ode sampler is adaptive and has no fixed steps');
  }
}

export interface SampleResult {
  /** (to - from) samples, d values each, in index order (NCHW = NHWC for one channel). */
  samples: Float32Array;
  /** Score evaluations per sample (ode: per sample, varies). */
  nfe: Int32Array;
  /** Batched score-function calls made. */
  calls: number;
}

/** x(1) for sample i: the given latent row, or priorStd * N(0, I) from Rng(seed, SamplePrior, i). */
export function priorDraw(model: ScoreModel, seed: number, i: number, d: number, latent?: Float32Array): Float64Array {
  if (latent !== undefined) {
    if ((i + 1) * d > latent.length) throw new Error(`latent has ${latent.length / d} rows of ${d} values; sample ${i} needs one more`);
    return Float64Array.from(latent.subarray(i * d, (i + 1) * d));
  }
  const z = new Rng(seed, Stream.SamplePrior, i).normal(d);
  const s = model.sde.priorStd();
  return Float64Array.from(z, (v) => v * s);
}

/** Samples with indices [from, to), batch by batch. */
export async function sampleRange(model: ScoreModel, opts: SampleOptions, from: number, to: number): Promise<SampleResult> {
  const o = resolveSampleOptions(opts);
  if (!(Number.isSafeInteger(from) && Number.isSafeInteger(to) && 0 <= from && from <= to))
    throw new Error(`bad index range [${from}, ${to})`);
  const score = new BatchScore(model, Math.max(o.batchSize, 1));
  const d = score.d;
  if (o.latent !== undefined && o.latent.length % d !== 0)
    throw new Error(`latent has ${o.latent.length} values, not a multiple of the sample size ${d} ([${model.shape.join(',')}])`);
  if (o.latent !== undefined && to * d > o.latent.length)
    throw new Error(`latent holds ${o.latent.length / d} samples, range [${from}, ${to}) needs ${to}`);
  const samples = new Float32Array((to - from) * d);
  const nfe = new Int32Array(to - from);
  for (let a = from; a < to; a += o.batchSize) {
    const b = Math.min(to, a + o.batchSize);
    const m = b - a;
    const x1 = new Float64Array(m * d);
    for (let j = 0; j < m; j++) x1.set(priorDraw(model, o.seed, a + j, d, o.latent), j * d);
    let x: Float64Array;
    if (o.sampler === 'ode') {
      const r = await probabilityFlow(model, score, x1, m, 1, o.eps, {
        rtol: o.rtol,
        atol: o.atol,
        h0: o.firstStep,
        onProgress: (done) => o.onProgress?.(a - from + done, to - from),
      });
      x = r.y;
      nfe.set(r.nfe, a - from);
    } else {
      const s = makeStepSampler(model, o);
      const streams = Array.from({ length: m }, (_, j) => new Rng(o.seed, Stream.SampleNoise, a + j));
      const io: StepIO = {
        m,
        d,
        score: (xx, t) => score.score(xx, t),
        noise: () => {
          const z = new Float64Array(m * d);
          for (let j = 0; j < m; j++) streams[j].fillNormal(z.subarray(j * d, (j + 1) * d));
          return z;
        },
      };
      x = s.begin(x1);
      for (let k = 0; k < s.steps; k++) {
        await s.step(k, x, io);
        o.onProgress?.(a - from + (m * (k + 1)) / s.steps, to - from);
      }
      x = s.end(x);
      nfe.fill(s.nfe, a - from, b - from);
    }
    for (let q = 0; q < m * d; q++) samples[(a - from) * d + q] = x[q];
  }
  return { samples, nfe, calls: score.calls };
}

/**
 * Integrate the probability-flow ODE dx/dt = f(t) x - g2(t)/2 s(x, t) for m rows from t0 to t1
 * with RK45, each row with its own step sizes. t0 = 1 -> t1 = eps decodes latents into samples;
 * eps -> 1 encodes data into latents.
 */
export async function probabilityFlow(
  model: ScoreModel,
  score: BatchScore,
  x0: Float64Array,
  m: number,
  t0: number,
  t1: number,
  ode: Rk45Options,
) {
  const sde = model.sde;
  const d = score.d;
  return rk45(
    async (t, y) => {
      const s = await score.score(y, t);
      const dy = new Float64Array(y.length);
      for (let j = 0; j < t.length; j++) {
        const f = sde.f(t[j]);
        const hg2 = 0.5 * sde.g2(t[j]);
        for (let q = j * d; q < (j + 1) * d; q++) dy[q] = f * y[q] - hg2 * s[q];
      }
      return dy;
    },
    t0,
    t1,
    x0,
    m,
    ode,
  );
}

/** Latents x(1) of data rows x(eps) through the probability-flow ODE (the inverse of the ode sampler). */
export async function encode(
  model: ScoreModel,
  x: Float32Array,
  opts: { eps?: number; rtol?: number; atol?: number; batchSize?: number; onProgress?: (done: number, total: number) => void } = {},
): Promise<{ latent: Float32Array; nfe: Int32Array }> {
  const score = new BatchScore(model, opts.batchSize ?? SAMPLE_DEFAULTS.batchSize);
  const d = score.d;
  if (x.length % d !== 0) throw new Error(`encode: ${x.length} values are not whole samples of ${d}`);
  const n = x.length / d;
  const bs = opts.batchSize ?? SAMPLE_DEFAULTS.batchSize;
  const latent = new Float32Array(x.length);
  const nfe = new Int32Array(n);
  for (let a = 0; a < n; a += bs) {
    const b = Math.min(n, a + bs);
    const r = await probabilityFlow(model, score, Float64Array.from(x.subarray(a * d, b * d)), b - a, opts.eps ?? SAMPLE_DEFAULTS.eps, 1, {
      rtol: opts.rtol ?? SAMPLE_DEFAULTS.rtol,
      atol: opts.atol ?? SAMPLE_DEFAULTS.atol,
    });
    latent.set(r.y, a * d);
    nfe.set(r.nfe, a);
    opts.onProgress?.(b, n);
  }
  return { latent, nfe };
}
