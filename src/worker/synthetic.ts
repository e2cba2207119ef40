/**
 * A synthetic training objective with the Trainer's contract, for protocol tests and the
 * communication benchmark: per-sample loss 0.5·|θ − t_i|² with a pseudo-random target t_i
 * per data index, Adam updates, an exact exportable state. Cheap (or, with
 * `computeMs`, deliberately slow) and deterministic, so any change in how the cluster sums
 * or applies gradients shows up in the parameters.
 */
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { GradSink, GradSum } from '../core/train/api.js';
import { allFinite, NonFiniteError } from '../core/train/finite.js';
import type { Replica, Snapshot } from './replica.js';

interface SyntheticState extends Snapshot {
  step: number;
  theta: Float32Array;
  m: Float32Array;
  v: Float32Array;
}

export interface SyntheticConfig {
  synthetic: true;
  params: number;
  batchSize: number;
  /** Data set size (for epochs). */
  samples: number;
  seed: number;
  lr: number;
  /** Extra busy time per gradient call, to imitate compute. */
  computeMs?: number;
  /** Makes the gradient of this step NaN (fault tests). */
  nanAtStep?: number;
  /**
   * A device does the arithmetic (the scaling benchmark): the gradient arrives as a constant
   * fill (the device-to-host copy of a GPU worker) and the update is plain SGD (one pass, where a
   * GPU worker runs the addon's Adam on the host), so what a step costs this process is
   * `computeMs` of sleep, the communication and our step's own host work, as on a GPU worker.
   */
  simulated?: boolean;
}

export const SYNTHETIC_DEFAULTS: SyntheticConfig = { synthetic: true, params: 1000, batchSize: 16, samples: 256, seed: 1, lr: 0.01 };

/** Target element j of data index i, in [-1, 1): an integer hash, fast for big vectors. */
function target(seed: number, i: number, j: number): number {
  let h = Math.imul(i + 0x9e3779b9 * seed, 0x85ebca6b) ^ Math.imul(j, 0xc2b2ae35);
  h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
  return ((h ^ (h >>> 12)) & 0xffff) / 32768 - 1;
}

export class SyntheticReplica implements Replica {
  readonly numParams: number;
  /** The four "layers" gradSum hands over with a sink. */
  readonly paramStarts: readonly number[];
  step = 0;
  private theta: Float32Array;
  private m: Float32Array;
  private v: Float32Array;

  constructor(readonly config: SyntheticConfig) {
    this.numParams = config.params;
    this.paramStarts = [...new Set([0, 1, 2, 3].map((l) => Math.floor((l * config.params) / 4)))];
    this.theta = new Float32Array(config.params);
    for (let j = 0; j < config.params; j++) this.theta[j] = target(config.seed, -1, j) * 0.1;
    this.m = new Float32Array(config.params);
    this.v = new Float32Array(config.params);
  }

  get params(): Float32Array {
    return this.theta;
  }

  /** Batches wrap around the data set, so every batch is whole. */
  lastBatch(): number {
    return this.config.batchSize;
  }

  stepsPerEpoch(): number {
    return Math.ceil(this.config.samples / this.config.batchSize);
  }

  /** Data index of sample b of step k's global batch: a fixed function of (seed, k, b). */
  index(step: number, b: number): number {
    return (step * this.config.batchSize + b) % this.config.samples;
  }

  /**
   * `computeMs` imitates a device: the first half of it is the forward pass, the second half a
   * backward pass that, with a sink, hands the gradient over in four "layers" from the last to
   * the first, one every eighth of the compute time (without one: all of it at the end).
   */
  async gradSum(step: number, from: number, to: number, sink?: GradSink): Promise<GradSum> {
    const t0 = performance.now();
    const g = this.gradSumSync(step, from, to, sink?.grad);
    const ms = this.config.computeMs ?? 0;
    const until = (t: number) => sleep(Math.max(0, t0 + t - performance.now()));
    if (!sink) {
      if (ms) await until(ms);
      return g;
    }
    if (ms) await until(ms / 2);
    const P = this.numParams;
    for (let l = 3; l >= 0; l--) {
      if (ms) await until(ms - (l * ms) / 8);
      const [a, b] = [Math.floor((l * P) / 4), Math.floor(((l + 1) * P) / 4)];
      if (b > a) sink.ready(a, b - a);
    }
    return g;
  }

  gradSumSync(step: number, from: number, to: number, into?: Float32Array): GradSum {
    const P = this.numParams;
    // (the simulated gradient assigns every element; the other one adds into them)
    const grad = !into ? new Float32Array(P) : this.config.simulated ? into : into.fill(0);
    if (this.config.simulated) {
      // The device computed it; the host only receives it: a memset-speed fill stands in for the copy back.
      const n = to - from;
      grad.fill(n * 1e-3);
      return { grad, lossSum: n, count: n };
    }
    let lossSum = 0;
    for (let b = from; b < to; b++) {
      const i = this.index(step, b);
      let loss = 0;
      for (let j = 0; j < P; j++) {
        const d = this.theta[j] - target(this.config.seed, i, j);
        grad[j] += d;
        loss += 0.5 * d * d;
      }
      lossSum += loss;
    }
    if (this.config.nanAtStep === step) grad[0] = NaN;
    return { grad, lossSum, count: to - from };
  }

  /** The mean gradient is f32(gradSum[j] / count), as the Trainer's update takes it (adam.ts). */
  apply(gradSum: Float32Array, count: number): void {
    if (gradSum.length !== this.numParams) throw new Error(`gradient has ${gradSum.length} values, expected ${this.numParams}`);
    if (!allFinite(gradSum)) throw new NonFiniteError(`non-finite gradient at step ${this.step}; state left unchanged`);
    const f32 = Math.fround;
    if (this.config.simulated) {
      const { theta, numParams: P } = this;
      const { lr } = this.config;
      for (let j = 0; j < P; j++) theta[j] -= lr * f32(gradSum[j] / count);
      this.step++;
      return;
    }
    const t = this.step + 1;
    const { lr } = this.config;
    const b1 = 0.9,
      b2 = 0.999,
      c1 = 1 - b1 ** t,
      c2 = 1 - b2 ** t;
    for (let j = 0; j < this.numParams; j++) {
      const g = f32(gradSum[j] / count);
      this.m[j] = b1 * this.m[j] + (1 - b1) * g;
      this.v[j] = b2 * this.v[j] + (1 - b2) * g * g;
      this.theta[j] -= (lr * (this.m[j] / c1)) / (Math.sqrt(this.v[j] / c2) + 1e-8);
    }
    this.step++;
  }

  snapshot(reuse?: Snapshot): SyntheticState {
    const r = reuse as SyntheticState | undefined;
    if (r?.theta.length !== this.numParams) return { step: this.step, theta: this.theta.slice(), m: this.m.slice(), v: this.v.slice() };
    r.theta.set(this.theta);
    r.m.set(this.m);
    r.v.set(this.v);
    r.step = this.step;
    return r;
  }

  restore(s: Snapshot): void {
    const x = s as SyntheticState;
    [this.theta, this.m, this.v, this.step] = [x.theta.slice(), x.m.slice(), x.v.slice(), x.step];
  }

  private current(s?: Snapshot): SyntheticState {
    return (s as SyntheticState | undefined) ?? { step: this.step, theta: this.theta, m: this.m, v: this.v };
  }

  checksum(s?: Snapshot): string {
    const x = this.current(s);
    const h = createHash('sha256');
    for (const a of [x.theta, x.m, x.v]) h.update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    return h.update(String(x.step)).digest('hex').slice(0, 16);
  }

  /** [u32 step][u32 P][θ][m][v], little-endian. */
  exportState(s?: Snapshot): Uint8Array {
    const x = this.current(s);
    const P = this.numParams;
    const out = new Uint8Array(8 + 12 * P);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, x.step, true);
    dv.setUint32(4, P, true);
    [x.theta, x.m, x.v].forEach((a, k) => out.set(new Uint8Array(a.buffer, a.byteOffset, 4 * P), 8 + 4 * P * k));
    return out;
  }

  importState(bytes: Uint8Array): void {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const P = this.numParams;
    if (bytes.byteLength !== 8 + 12 * P || dv.getUint32(4, true) !== P) throw new Error(`synthetic state does not match ${P} parameters`);
    const copy = new Uint8Array(bytes.subarray(8)); // a copy (Buffer.slice would be a view)
    this.theta = new Float32Array(copy.buffer, 0, P);
    this.m = new Float32Array(copy.buffer, 4 * P, P);
    this.v = new Float32Array(copy.buffer, 8 * P, P);
    this.step = dv.getUint32(0, true);
  }

  async close(): Promise<void> {}
}

export function isSyntheticConfig(c: unknown): c is SyntheticConfig {
  return typeof c === 'object' && c !== null && (c as { synthetic?: unknown }).synthetic === true;
}

export async function syntheticReplica(configJson: string, state?: Uint8Array): Promise<Replica> {
  const r = new SyntheticReplica({ ...SYNTHETIC_DEFAULTS, ...(JSON.parse(configJson) as Partial<SyntheticConfig>) });
  if (state) r.importState(state);
  return r;
}
