/**
 * Adaptive Dormand–Prince RK5(4) (Dormand & Prince 1980; Hairer, Nørsett & Wanner, "Solving
 * ODEs I", II.4-5), with the step-size control of scipy's `solve_ivp(method='RK45')`.
 *
 * It integrates a *batch of independent problems* y_i' = F(t_i, y_i), i = 0..m-1, each of
 * dimension d, from t0 to t1. Every problem keeps its own time t_i, step h_i, error norm and
 * accept/reject decisions; one call of the vector field evaluates every unfinished problem at
 * its own stage time (the score network takes a time per sample, so this costs no more than a
 * batched solve). Hence problem i's trajectory depends only on problem i: the result is the
 * same whether it is solved alone or in a batch of 64, which the job fan-out relies on.
 * (scipy's solver, as used by the reference, controls one error norm over the whole batch.)
 *
 * State is float64, as in scipy; the field may compute in float32.
 */

/** F(t, y) for a set of problems: t[j] and rows y[j*d .. (j+1)*d) of the problems `ids[j]`; returns dy/dt as m*d values. */
export type BatchField = (t: Float64Array, y: Float64Array, ids: readonly number[]) => Promise<ArrayLike<number>>;

export interface Rk45Options {
  /** Relative tolerance (default 1e-5). */
  rtol?: number;
  /** Absolute tolerance (default 1e-5). */
  atol?: number;
  /** First step size |h0|; default: Hairer's heuristic, which costs one extra evaluation. */
  h0?: number;
  /** Smallest |h| allowed, as a fraction of |t1 - t0| (default 1e-12); below it the solve fails instead of crawling. */
  minStepFraction?: number;
  /** Give up after this many step attempts per problem (default 100000). */
  maxSteps?: number;
  /** Called after every batched step attempt with the number of problems done so far. */
  onProgress?: (done: number, total: number) => void;
}

export interface Rk45Result {
  /** y_i(t1), m*d values. */
  y: Float64Array;
  /** Evaluations of F per problem, counted as scipy's nfev. */
  nfe: Int32Array;
  /** Accepted and rejected steps per problem. */
  accepted: Int32Array;
  rejected: Int32Array;
  /** Batched calls of the field (= network calls). */
  calls: number;
}

// Dormand–Prince 5(4) tableau: nodes c, stage matrix a, 5th-order weights b (the solution), and
// e = b - b* (5th minus 4th order weights, including the FSAL 7th stage) for the error estimate.
const C = [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1];
const A = [
  [],
  [1 / 5],
  [3 / 40, 9 / 40],
  [44 / 45, -56 / 15, 32 / 9],
  [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
  [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
];
const B = [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84];
const E = [-71 / 57600, 0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40];

// scipy's controller: h_new = h * clip(SAFETY * err^(-1/5), MIN_FACTOR, MAX_FACTOR); no growth right after a rejection.
const SAFETY = 0.9;
const MIN_FACTOR = 0.2;
const MAX_FACTOR = 10;
const ORDER_EXP = -1 / 5; // -1/(q+1), q = 4 the order of the embedded error estimator

export class OdeStallError extends Error {
  constructor(
    readonly t: number,
    readonly h: number,
    readonly problem: number,
  ) {
    super(
      `ODE solver stalled at t=${t.toPrecision(8)}: step size ${h.toExponential(3)} fell below the floor (problem ${problem}); the vector field is stiff, not finite, or the tolerances too tight`,
    );
    this.name = 'OdeStallError';
  }
}

function checkOptions(o: Rk45Options): Required<Omit<Rk45Options, 'h0' | 'onProgress'>> & Pick<Rk45Options, 'h0' | 'onProgress'> {
  const rtol = o.rtol ?? 1e-5;
  const atol = o.atol ?? 1e-5;
  if (!(rtol > 0) || !Number.isFinite(rtol)) throw new Error(`rtol must be a positive number, got ${rtol}`);
  if (!(atol > 0) || !Number.isFinite(atol)) throw new Error(`atol must be a positive number, got ${atol}`);
  if (o.h0 !== undefined && !(o.h0 > 0)) throw new Error(`h0 must be positive, got ${o.h0}`);
  const minStepFraction = o.minStepFraction ?? 1e-12;
  const maxSteps = o.maxSteps ?? 100000;
  if (!(minStepFraction > 0)) throw new Error(`minStepFraction must be positive, got ${minStepFraction}`);
  if (!(Number.isSafeInteger(maxSteps) && maxSteps > 0)) throw new Error(`maxSteps must be a positive integer, got ${maxSteps}`);
  return { rtol, atol, minStepFraction, maxSteps, h0: o.h0, onProgress: o.onProgress };
}

/** Solve m independent d-dimensional problems from t0 to t1 (either direction), y0 holding m*d values. */
export async function rk45(
  field: BatchField,
  t0: number,
  t1: number,
  y0: ArrayLike<number>,
  m: number,
  opts: Rk45Options = {},
): Promise<Rk45Result> {
  const o = checkOptions(opts);
  if (!(Number.isSafeInteger(m) && m >= 0)) throw new Error(`rk45: problem count must be a non-negative integer, got ${m}`);
  if (m > 0 && y0.length % m !== 0) throw new Error(`rk45: ${y0.length} initial values do not split into ${m} problems`);
  if (!(Number.isFinite(t0) && Number.isFinite(t1)) || t0 === t1) throw new Error(`rk45: need finite t0 != t1, got ${t0}, ${t1}`);
  const d = m === 0 ? 0 : y0.length / m;
  const dir = Math.sign(t1 - t0);
  const span = Math.abs(t1 - t0);
  const hFloor = o.minStepFraction * span;

  const y = Float64Array.from(y0);
  const t = new Float64Array(m).fill(t0);
  const h = new Float64Array(m); // |h|
  const k = Array.from({ length: 7 }, () => new Float64Array(m * d)); // stage derivatives, k[0] = F(t, y) (FSAL)
  const nfe = new Int32Array(m);
  const accepted = new Int32Array(m);
  const rejected = new Int32Array(m);
  const done = new Uint8Array(m);
  let calls = 0;

  /** Evaluate F for problems ids at compact (ts, ys) (row j = problem ids[j]); write row j into dst's row ids[j]. */
  const evalInto = async (ids: number[], ts: Float64Array, ys: Float64Array, dst: Float64Array): Promise<void> => {
    calls++;
    const out = await field(ts, ys, ids);
    if (out.length !== ids.length * d)
      throw new Error(`rk45: vector field returned ${out.length} values for ${ids.length} problems of dimension ${d}`);
    ids.forEach((i, j) => {
      nfe[i]++;
      for (let q = 0; q < d; q++) dst[i * d + q] = out[j * d + q];
    });
  };
  const gather = (ids: number[], src: Float64Array) => {
    const g = new Float64Array(ids.length * d);
    ids.forEach((i, j) => g.set(src.subarray(i * d, (i + 1) * d), j * d));
    return g;
  };
  /** RMS norm of v scaled by atol + rtol |y|, as scipy. */
  const rms = (v: Float64Array, scale: Float64Array): number => {
    let s = 0;
    for (let q = 0; q < v.length; q++) s += (v[q] / scale[q]) ** 2;
    return Math.sqrt(s / Math.max(v.length, 1));
  };

  const all = Array.from({ length: m }, (_, i) => i);
  if (m === 0) return { y, nfe, accepted, rejected, calls };
  await evalInto(all, t, y, k[0]);

  // Initial step (Hairer I, II.4 / scipy select_initial_step): h0 from |y|/|f|, refined by one Euler probe.
  if (o.h0 !== undefined) {
    h.fill(Math.min(o.h0, span));
  } else {
    const h0s = new Float64Array(m);
    const y1 = new Float64Array(m * d);
    const sc = new Float64Array(d);
    const d0s = new Float64Array(m);
    const d1s = new Float64Array(m);
    for (const i of all) {
      const yi = y.subarray(i * d, (i + 1) * d);
      const fi = k[0].subarray(i * d, (i + 1) * d);
      for (let q = 0; q < d; q++) sc[q] = o.atol + o.rtol * Math.abs(yi[q]);
      d0s[i] = rms(yi, sc);
      d1s[i] = rms(fi, sc);
      h0s[i] = d0s[i] < 1e-5 || d1s[i] < 1e-5 ? 1e-6 : (0.01 * d0s[i]) / d1s[i];
      h0s[i] = Math.min(h0s[i], span);
      for (let q = 0; q < d; q++) y1[i * d + q] = yi[q] + dir * h0s[i] * fi[q];
    }
    const f1 = new Float64Array(m * d);
    const t1s = new Float64Array(m);
    for (const i of all) t1s[i] = t0 + dir * h0s[i];
    await evalInto(all, t1s, y1, f1);
    for (const i of all) {
      const yi = y.subarray(i * d, (i + 1) * d);
      for (let q = 0; q < d; q++) sc[q] = o.atol + o.rtol * Math.abs(yi[q]);
      const diff = new Float64Array(d);
      for (let q = 0; q < d; q++) diff[q] = f1[i * d + q] - k[0][i * d + q];
      const d2 = rms(diff, sc) / h0s[i];
      const h1 = d1s[i] <= 1e-15 && d2 <= 1e-15 ? Math.max(1e-6, h0s[i] * 1e-3) : (0.01 / Math.max(d1s[i], d2)) ** (1 / 5);
      h[i] = Math.min(100 * h0s[i], h1, span);
    }
  }

  const yStage = new Float64Array(m * d);
  const yNew = new Float64Array(m * d);
  const tStage = new Float64Array(m);
  const hStep = new Float64Array(m); // signed step of the current attempt
  const justRejected = new Uint8Array(m);
  const attempts = new Int32Array(m);
  let nDone = 0;

  while (nDone < m) {
    const ids = all.filter((i) => !done[i]);
    for (const i of ids) {
      if (h[i] < hFloor) throw new OdeStallError(t[i], h[i], i);
      if (++attempts[i] > o.maxSteps)
        throw new Error(
          `ODE solver gave up after ${o.maxSteps} steps at t=${t[i].toPrecision(6)} (step size ${h[i].toExponential(3)}, problem ${i})`,
        );
      // do not step past t1
      const remaining = Math.abs(t1 - t[i]);
      hStep[i] = dir * Math.min(h[i], remaining);
    }
    // stages 2..6: k_s = F(t + c_s h, y + h sum_j a_sj k_j)
    for (let s = 1; s < 6; s++) {
      for (const i of ids) {
        tStage[i] = t[i] + C[s] * hStep[i];
        for (let q = i * d; q < (i + 1) * d; q++) {
          let acc = 0;
          for (let j = 0; j < s; j++) acc += A[s][j] * k[j][q];
          yStage[q] = y[q] + hStep[i] * acc;
        }
      }
      await evalInto(ids, gatherT(ids, tStage), gather(ids, yStage), k[s]);
    }
    // 5th-order solution and its derivative (7th stage, reused as k_1 of the next step: FSAL)
    for (const i of ids) {
      tStage[i] = hStep[i] === dir * Math.abs(t1 - t[i]) ? t1 : t[i] + hStep[i];
      for (let q = i * d; q < (i + 1) * d; q++) {
        let acc = 0;
        for (let j = 0; j < 6; j++) acc += B[j] * k[j][q];
        yNew[q] = y[q] + hStep[i] * acc;
      }
    }
    await evalInto(ids, gatherT(ids, tStage), gather(ids, yNew), k[6]);

    for (const i of ids) {
      // error estimate h * sum_j e_j k_j, scaled by atol + rtol max(|y|, |y_new|)
      let s2 = 0;
      for (let q = i * d; q < (i + 1) * d; q++) {
        let acc = 0;
        for (let j = 0; j < 7; j++) acc += E[j] * k[j][q];
        const sc = o.atol + o.rtol * Math.max(Math.abs(y[q]), Math.abs(yNew[q]));
        s2 += ((hStep[i] * acc) / sc) ** 2;
      }
      let err = Math.sqrt(s2 / d);
      if (!Number.isFinite(err)) err = Infinity; // NaN/Inf in the field: reject and shrink
      if (err < 1) {
        const factor = err === 0 ? MAX_FACTOR : Math.min(MAX_FACTOR, SAFETY * err ** ORDER_EXP);
        t[i] = tStage[i];
        for (let q = i * d; q < (i + 1) * d; q++) {
          y[q] = yNew[q];
          k[0][q] = k[6][q];
        }
        h[i] = Math.abs(hStep[i]) * (justRejected[i] ? Math.min(1, factor) : factor);
        justRejected[i] = 0;
        accepted[i]++;
        if (t[i] === t1) {
          done[i] = 1;
          nDone++;
        }
      } else {
        h[i] = Math.abs(hStep[i]) * Math.max(MIN_FACTOR, SAFETY * err ** ORDER_EXP);
        justRejected[i] = 1;
        rejected[i]++;
      }
    }
    o.onProgress?.(nDone, m);
  }
  return { y, nfe, accepted, rejected, calls };

  function gatherT(ids: number[], src: Float64Array): Float64Array {
    return Float64Array.from(ids, (i) => src[i]);
  }
}
