/**
 * One replica of the training state: parameters, Adam moments and EMA as flat float32
 * vectors, and the source of its gradients (its own GradEngine unless given a GradPool).
 * The cluster runs one per worker; `scoreflow train` one. A step is step.ts's.
 */
import { createHash } from 'node:crypto';
import type { GradSink, GradSource, GradSum, ParamSpec, StepBatch } from './api.js';
import { adamStep, newOptimState, type OptimState } from './adam.js';
import type { NativeAdam } from '../backend/native-adam.js';
import { encodeCheckpoint, loadCheckpointBytes, loadTrainingCheckpoint, type DecodedCheckpoint } from './checkpoint.js';
import type { TrainConfig } from './config.js';
import { GradEngine, type Images } from './engine.js';
import { initParams } from '../model/params.js';
import { writeFileAtomic } from '../io/atomic.js';

export class Trainer {
  readonly engine: GradEngine;
  readonly specs: ParamSpec[];
  readonly numParams: number;
  private state: OptimState;
  /** Bumped on every change of the parameters, to know when to re-upload them. */
  private version = 0;
  private source: GradSource;
  /** The update's engine: a backend's native Adam (same bits), or undefined for the JavaScript loop. */
  private adam: NativeAdam | undefined;

  private constructor(
    readonly config: TrainConfig,
    data: Images,
    state?: OptimState,
  ) {
    this.engine = new GradEngine(config, data);
    this.specs = this.engine.net.infos.map(({ name, shape, offset, size }) => ({ name, shape, offset, size }));
    this.numParams = this.engine.numParams;
    this.source = this.engine;
    this.state = state ?? newOptimState(initParams(this.engine.net.infos, config.seed));
    if (this.state.params.length !== this.numParams) {
      throw new Error(`state has ${this.state.params.length} parameters, the model ${this.numParams}`);
    }
  }

  static create(config: TrainConfig, data: Images): Trainer {
    return new Trainer(config, data);
  }

  /** Resume from a training checkpoint; the run's config comes from the file. */
  static load(path: string, data: Images): Trainer {
    const { config, state } = loadTrainingCheckpoint(path);
    return new Trainer(config, data, state);
  }

  /** Resume from a checkpoint already decoded (e.g. to compare its config with the flags first). */
  static fromCheckpoint(ck: DecodedCheckpoint, data: Images): Trainer {
    return new Trainer(ck.config, data, ck.state);
  }

  static fromState(bytes: Uint8Array, data: Images): Trainer {
    const { config, state } = loadCheckpointBytes(bytes);
    return new Trainer(config, data, state);
  }

  get step(): number {
    return this.state.step;
  }

  get params(): Float32Array {
    return this.state.params;
  }

  get ema(): Float32Array {
    return this.state.ema;
  }

  get paramsVersion(): number {
    return this.version;
  }

  stepsPerEpoch(): number {
    return Math.ceil(this.engine.data.n / this.config.batchSize);
  }

  batch(step: number): StepBatch {
    return this.engine.batch(step);
  }

  /** Computes gradients with `source` from now on (e.g. a GradPool made for this config). */
  setGradSource(source: GradSource): this {
    this.source = source;
    return this;
  }

  /** Applies updates with `adam` from now on (native-adam.ts nativeAdamFor(backend); undefined: the JavaScript loop). */
  setAdam(adam: NativeAdam | undefined): this {
    this.adam = adam;
    return this;
  }

  /** Sum over samples [from, to) of step `step`'s global batch of the per-sample loss gradients, at the current parameters (api.ts: the sink). */
  async gradSum(step: number, from: number, to: number, sink?: GradSink): Promise<GradSum> {
    return this.source.gradSum(this.state.params, this.version, step, from, to, sink);
  }

  /**
   * The identical update on every replica with the mean of a gradient sum over `count` samples:
   * clip, Adam, EMA, step += 1 (throws NonFiniteError on a non-finite sum, changing nothing).
   * Returns the mean gradient's norm before clipping when clipping or `measure` computed it.
   */
  apply(gradSum: Float32Array, count: number, measure = false): number | undefined {
    const norm = adamStep(this.state, gradSum, this.config, this.adam, count, measure);
    this.version++;
    return norm;
  }

  /** A copy of the whole state (parameters, moments, EMA, step): a rollback point. */
  snapshot(reuse?: OptimState): OptimState {
    const s = this.state;
    if (reuse?.params.length !== this.numParams)
      return { params: s.params.slice(), m: s.m.slice(), v: s.v.slice(), ema: s.ema.slice(), step: s.step };
    // (into the arrays of a snapshot nobody holds any more: 16 MB less garbage per snapshot)
    reuse.params.set(s.params);
    reuse.m.set(s.m);
    reuse.v.set(s.v);
    reuse.ema.set(s.ema);
    reuse.step = s.step;
    return reuse;
  }

  /** Goes back to a snapshot (copied in: the snapshot stays usable). */
  restore(s: OptimState): void {
    if (s.params.length !== this.numParams) throw new Error(`snapshot has ${s.params.length} parameters, the model ${this.numParams}`);
    this.state = { params: s.params.slice(), m: s.m.slice(), v: s.v.slice(), ema: s.ema.slice(), step: s.step };
    this.version++;
  }

  /** SHA-256 over parameters, moments, EMA and step (of `s`, else the current state): equal across replicas iff their states are. */
  checksum(s: OptimState = this.state): string {
    const h = createHash('sha256');
    for (const a of [s.params, s.m, s.v, s.ema]) h.update(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    h.update(String(s.step));
    return h.digest('hex').slice(0, 16);
  }

  private meta(extra: Record<string, string>): Record<string, string> {
    return { steps_per_epoch: String(this.stepsPerEpoch()), ...extra };
  }

  /** The current state (or the snapshot `s`) in the checkpoint format. */
  exportState(extra: Record<string, string> = {}, s: OptimState = this.state): Uint8Array {
    return encodeCheckpoint(this.config, s, this.meta(extra));
  }

  importState(bytes: Uint8Array): void {
    const { state } = loadCheckpointBytes(bytes);
    if (state.params.length !== this.numParams) throw new Error(`state has ${state.params.length} parameters, the model ${this.numParams}`);
    this.state = state;
    this.version++;
  }

  async saveCheckpoint(path: string, extra: Record<string, string> = {}): Promise<void> {
    await writeFileAtomic(path, this.exportState(extra));
  }

  dispose(): void {
    this.engine.dispose();
  }
}
