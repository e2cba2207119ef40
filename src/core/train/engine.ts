/**
 * Gradient sums of the DSM loss over any slice of a global batch.
 *
 * The randomness of sample j of step k (its time t, from one uniform through the recipe's
 * noise-level law in noise.ts, and its noise z) comes from the stream (seed, TrainNoise, k, j) and the images from the epoch's seeded permutation, so a slice
 * computed on any worker or thread gives the same terms; only the order of float additions
 * differs between ways of slicing.
 */
import * as tf from '@tensorflow/tfjs';
import { dsmLossPerSample } from '../loss.js';
import { ScoreNet, type ParamTensors } from '../model/scorenet.js';
import { numParams } from '../model/params.js';
import { Rng, Stream } from '../rng.js';
import { makeSde } from '../sde.js';
import { likelihoodWeight, trainTime } from './noise.js';
import type { GradSink, GradSource, GradSum, StepBatch } from './api.js';
import { stepBatch } from '../data/batches.js';
import { readInto } from '../backend/index.js';
import type { TrainConfig } from './config.js';

/** Images as float32 in [0, 1], row-major [n, h, w]. */
export interface Images {
  n: number;
  h: number;
  w: number;
  data: Float32Array;
}

export class GradEngine implements GradSource {
  readonly net: ScoreNet;
  readonly numParams: number;
  private uploaded: { version: number; tensors: ParamTensors } | null = null;
  private batchCache: StepBatch | null = null;

  constructor(
    readonly config: TrainConfig,
    readonly data: Images,
  ) {
    if (data.h !== config.model.height || data.w !== config.model.width) {
      throw new Error(`images are ${data.h}x${data.w}, the model expects ${config.model.height}x${config.model.width}`);
    }
    this.net = new ScoreNet(config.model, makeSde(config.sde));
    this.numParams = numParams(this.net.infos);
  }

  batch(step: number): StepBatch {
    if (this.batchCache?.step !== step) this.batchCache = stepBatch(this.config.seed, step, this.config.batchSize, this.data.n);
    return this.batchCache;
  }

  /** Parameter tensors, re-uploaded only when the caller's version changes. */
  private paramTensors(params: Float32Array, version: number): ParamTensors {
    if (this.uploaded?.version !== version) {
      this.disposeParams();
      this.uploaded = { version, tensors: tf.tidy(() => this.net.tensors(params)) };
      for (const t of Object.values(this.uploaded.tensors)) tf.keep(t);
    }
    return this.uploaded.tensors;
  }

  /** Inputs of samples [from, to) of the step's global batch. */
  inputs(step: number, from: number, to: number): { x: Float32Array; t: Float32Array; z: Float32Array } {
    const { indices } = this.batch(step);
    if (!(0 <= from && from < to && to <= indices.length)) {
      throw new Error(`slice [${from}, ${to}) is outside the batch of ${indices.length} samples at step ${step}`);
    }
    const d = this.data.h * this.data.w;
    const count = to - from;
    const x = new Float32Array(count * d);
    const t = new Float32Array(count);
    const z = new Float32Array(count * d);
    for (let j = 0; j < count; j++) {
      const i = indices[from + j];
      x.set(this.data.data.subarray(i * d, (i + 1) * d), j * d);
      const rng = new Rng(this.config.seed, Stream.TrainNoise, step, from + j);
      t[j] = trainTime(this.config, rng.uniform());
      rng.fillNormal(z.subarray(j * d, (j + 1) * d));
    }
    return { x, t, z };
  }

  /**
   * Sum over samples [from, to) of step `step` of the per-sample loss gradients. With a sink,
   * each trainable parameter passes through an identity whose gradient function hands the
   * parameter's (then final) gradient to the sink during the backward pass, in the order the
   * pass finishes them (the last layers' first).
   */
  gradSum(params: Float32Array, version: number, step: number, from: number, to: number, sink?: GradSink): GradSum {
    const p = this.paramTensors(params, version);
    const { x, t, z } = this.inputs(step, from, to);
    const count = to - from;
    const { h, w } = this.data;
    const trainable = this.net.infos.filter((i) => i.trainable);
    const grad = sink?.grad ?? new Float32Array(this.numParams);
    if (grad.length !== this.numParams) throw new Error(`gradient sink holds ${grad.length} values, the model ${this.numParams}`);
    const handed = new Uint8Array(trainable.length);
    // Fixed parameters have no gradient: their zeros are final from the start.
    if (sink)
      for (const info of this.net.infos)
        if (!info.trainable) {
          grad.fill(0, info.offset, info.offset + info.size);
          sink.ready(info.offset, info.size);
        }
    const tap = (k: number) =>
      tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
        value: tf.clone(args[0] as tf.Tensor),
        gradFunc: (dy: tf.Tensor) => {
          const { offset, size } = trainable[k];
          readInto(dy, grad.subarray(offset, offset + size));
          handed[k] = 1;
          sink!.ready(offset, size);
          return dy;
        },
      }));
    const lossSum = tf.tidy(() => {
      const xs = tf.tensor4d(x, [count, h, w, 1]);
      const ts = tf.tensor1d(t);
      const zs = tf.tensor4d(z, [count, h, w, 1]);
      const f = (...ws: tf.Tensor[]) => {
        const pp: ParamTensors = { ...p };
        trainable.forEach((info, k) => {
          if (!sink) return void (pp[info.name] = ws[k]);
          // The identity goes on the tape where the model first reads the parameter, just before
          // its use, so the backward pass reaches it right after that use's gradient: when the
          // parameter's gradient is final (each is used once), not at the very end of the pass,
          // where identities put on the tape before the forward pass would all land together.
          Object.defineProperty(pp, info.name, {
            enumerable: true,
            configurable: true,
            get: () => {
              const tapped = tap(k)(ws[k]);
              Object.defineProperty(pp, info.name, { value: tapped, enumerable: true });
              return tapped;
            },
          });
        });
        const score = (a: tf.Tensor4D, b: tf.Tensor1D) => this.net.apply(pp, a, b);
        const c = this.config.noise === 'likelihood' ? likelihoodWeight(this.config) : undefined;
        return dsmLossPerSample(score, this.net.sde, xs, ts, zs, this.config.weighting, this.config.sigmaData, c).sum() as tf.Scalar;
      };
      const { value, grads } = tf.valueAndGrads(f)(trainable.map((info) => p[info.name]));
      trainable.forEach((info, k) => {
        if (handed[k]) return;
        readInto(grads[k], grad.subarray(info.offset, info.offset + info.size));
        sink?.ready(info.offset, info.size);
      });
      return value.dataSync()[0];
    });
    return { grad, lossSum, count };
  }

  private disposeParams(): void {
    if (this.uploaded) tf.dispose(Object.values(this.uploaded.tensors));
    this.uploaded = null;
  }

  dispose(): void {
    this.disposeParams();
  }
}
