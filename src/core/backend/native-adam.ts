/**
 * The native Adam update a backend has (today the torch addon's), for whoever builds a Trainer
 * or trains the classifier to hand to the optimiser (src/core/train/adam.ts) explicitly.
 */
import { loadTorchAddon } from './torch/addon.js';

/**
 * One Adam + EMA update in place (native/src/adam.cc) with the mean of the gradient sum g over
 * `count` samples: the same double-precision arithmetic as the JavaScript update, so the same
 * bits. Returns -1, or the index of the first non-finite value of g (then nothing was written).
 * `scalars`: [scale, beta1, beta2, stepSize, sqrtBc2, eps, decay, count].
 */
export type NativeAdam = (
  g: Float32Array,
  p: Float32Array,
  m: Float32Array,
  v: Float32Array,
  ema: Float32Array,
  scalars: Float64Array,
) => number;

/** The native Adam of the running backend `backend` (its addon's on torch), or undefined: the optimiser then runs its JavaScript loop. */
export function nativeAdamFor(backend: string): NativeAdam | undefined {
  return backend === 'torch' ? loadTorchAddon().adam : undefined;
}
