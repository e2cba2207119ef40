/**
 * The bridge between the samplers (plain float64 arrays, one row per sample) and a tfjs score
 * function s(x, t) ~ grad_x log p_t(x). Every call uploads the rows, evaluates the score (and,
 * for likelihoods, a divergence estimate) in one batch, downloads the result and frees all
 * tensors. Samplers stay backend-agnostic, per-sample and deterministic; the network cost
 * dominates the transfers by far.
 */
import * as tf from '@tensorflow/tfjs';
import type { ScoreFn } from '../loss.js';
import type { SDE } from '../sde.js';

/** Per-sample data shape [h, w, c] (channels-last, as the ScoreNet). */
export type DataShape = readonly [number, number, number];

/** What every sampler and the likelihood need: the SDE, a score function and the shape of one sample. */
export interface ScoreModel {
  sde: SDE;
  score: ScoreFn;
  shape: DataShape;
}

export function dimOf(shape: DataShape): number {
  return shape[0] * shape[1] * shape[2];
}

export class BatchScore {
  /** Batched calls of the score function (network forward passes, or forward+backward for divergences). */
  calls = 0;
  readonly d: number;

  constructor(
    readonly model: ScoreModel,
    /** Largest batch handed to the score function at once (divergence replicas count). */
    readonly maxBatch = 1024,
  ) {
    if (!shapeOk(model.shape)) throw new Error(`data shape must be 3 positive integers [h,w,c], got [${model.shape.join(',')}]`);
    if (!(Number.isSafeInteger(maxBatch) && maxBatch >= 1)) throw new Error(`maxBatch must be a positive integer, got ${maxBatch}`);
    this.d = dimOf(model.shape);
  }

  /** s(x_j, t_j) for m rows x (m*d values) and times t (m); rows beyond maxBatch go in several calls. */
  async score(x: ArrayLike<number>, t: ArrayLike<number>): Promise<Float32Array> {
    const m = t.length;
    const out = new Float32Array(m * this.d);
    for (let a = 0; a < m; a += this.maxBatch) {
      const b = Math.min(m, a + this.maxBatch);
      out.set(await this.scoreChunk(sliceRows(x, a, b, this.d), sliceRows(t, a, b, 1)), a * this.d);
    }
    return out;
  }

  private async scoreChunk(x: Float32Array, t: Float32Array): Promise<Float32Array> {
    const m = t.length;
    const [h, w, c] = this.model.shape;
    this.calls++;
    const y = tf.tidy(() => this.model.score(tf.tensor4d(x, [m, h, w, c]), tf.tensor1d(t)));
    try {
      checkShape(y.shape, m, this.model.shape);
      return (await y.data()) as Float32Array;
    } finally {
      y.dispose();
    }
  }

  /**
   * Score and divergence of the score at (x_j, t_j) from probe vectors v_{j,k} (m*K*d values,
   * row-major by sample then probe): div_j = w * sum_k v_jk^T (ds/dx) v_jk, each term one
   * vector-Jacobian product. With Gaussian or Rademacher probes and w = 1/K this is the
   * Skilling–Hutchinson estimator; with the d basis vectors as probes and w = 1 it is the exact
   * trace. Probes are processed as replicas of the batch, maxBatch rows at a time.
   */
  async scoreAndDivergence(
    x: ArrayLike<number>,
    t: ArrayLike<number>,
    probes: Float32Array,
    k: number,
    weight: number,
    /** Also return each probe's v^T (ds/dx) v, [m*k] (unweighted), for the probes' variance. */
    perProbe = false,
  ): Promise<{ score: Float32Array; div: Float64Array; probeDiv?: Float64Array }> {
    const m = t.length;
    const d = this.d;
    if (probes.length !== m * k * d) throw new Error(`scoreAndDivergence: ${probes.length} probe values, expected ${m}*${k}*${d}`);
    const score = new Float32Array(m * d);
    const div = new Float64Array(m);
    const probeDiv = perProbe ? new Float64Array(m * k) : undefined;
    // chunks of samples [a, b) times probe replicas [r0, r1), at most maxBatch rows each
    const perChunk = Math.max(1, Math.floor(this.maxBatch / Math.max(m, 1)));
    const sampleStep = Math.min(m, this.maxBatch);
    for (let a = 0; a < m; a += sampleStep) {
      const b = Math.min(m, a + sampleStep);
      const xs = sliceRows(x, a, b, d);
      const ts = sliceRows(t, a, b, 1);
      for (let r0 = 0; r0 < k; r0 += perChunk) {
        const r1 = Math.min(k, r0 + perChunk);
        const { s, vjp } = await this.vjpChunk(xs, ts, probes, a, b, r0, r1, k);
        if (r0 === 0) score.set(s, a * d);
        for (let r = 0; r < r1 - r0; r++) {
          for (let j = 0; j < b - a; j++) {
            const row = r * (b - a) + j;
            const pOff = ((a + j) * k + r0 + r) * d;
            let acc = 0;
            for (let q = 0; q < d; q++) acc += vjp[row * d + q] * probes[pOff + q];
            div[a + j] += weight * acc;
            if (probeDiv) probeDiv[(a + j) * k + r0 + r] = acc;
          }
        }
      }
    }
    return { score, div, probeDiv };
  }

  /** One batched forward + backward: rows (replica r, sample j) of x tiled; returns s of replica 0 and v^T J per row. */
  private async vjpChunk(
    xs: Float32Array,
    ts: Float32Array,
    probes: Float32Array,
    a: number,
    b: number,
    r0: number,
    r1: number,
    k: number,
  ): Promise<{ s: Float32Array; vjp: Float32Array }> {
    const n = b - a;
    const reps = r1 - r0;
    const d = this.d;
    const [h, w, c] = this.model.shape;
    const xt = new Float32Array(reps * n * d);
    const tt = new Float32Array(reps * n);
    const vt = new Float32Array(reps * n * d);
    for (let r = 0; r < reps; r++) {
      xt.set(xs, r * n * d);
      tt.set(ts, r * n);
      for (let j = 0; j < n; j++) vt.set(probes.subarray(((a + j) * k + r0 + r) * d, ((a + j) * k + r0 + r + 1) * d), (r * n + j) * d);
    }
    this.calls++;
    const { value, grad } = tf.tidy(() => {
      const x = tf.tensor4d(xt, [reps * n, h, w, c]);
      const t = tf.tensor1d(tt);
      const v = tf.tensor4d(vt, [reps * n, h, w, c]);
      // valueAndGrad with an upstream gradient dy = v gives s(x) and v^T ds/dx in one pass
      const r = tf.valueAndGrad((xx: tf.Tensor) => this.model.score(xx as tf.Tensor4D, t))(x, v);
      return { value: r.value.slice([0, 0, 0, 0], [n, h, w, c]), grad: r.grad };
    });
    try {
      return { s: (await value.data()) as Float32Array, vjp: (await grad.data()) as Float32Array };
    } finally {
      value.dispose();
      grad.dispose();
    }
  }
}

function shapeOk(s: DataShape): boolean {
  return s.length === 3 && s.every((v) => Number.isSafeInteger(v) && v > 0);
}

function checkShape(got: number[], m: number, shape: DataShape): void {
  if (got.length !== 4 || got[0] !== m || got[1] !== shape[0] || got[2] !== shape[1] || got[3] !== shape[2]) {
    throw new Error(`score function returned shape [${got.join(',')}], expected [${m},${shape.join(',')}]`);
  }
}

/** Rows [a, b) of a row-major array with d values per row, as float32. */
export function sliceRows(x: ArrayLike<number>, a: number, b: number, d: number): Float32Array {
  const out = new Float32Array((b - a) * d);
  for (let q = 0; q < out.length; q++) out[q] = x[a * d + q];
  return out;
}
