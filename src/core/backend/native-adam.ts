/**
 * The native Adam update a backend may offer to the optimiser (src/core/train/adam.ts asks for it
 * with nativeAdam()). Today the torch backend offers its addon's once it is registered.
 */

/**
 * One Adam + EMA update in place (native/src/adam.cc): the same double-precision arithmetic as
 * the JavaScript update, so the same bits. Returns -1, or the index of the first non-finite
 * gradient value (then nothing was written). `scalars`: [scale, beta1, beta2, stepSize, sqrtBc2,
 * eps, decay].
 */
export type NativeAdam = (
  g: Float32Array,
  p: Float32Array,
  m: Float32Array,
  v: Float32Array,
  ema: Float32Array,
  scalars: Float64Array,
) => number;

let offered: NativeAdam | undefined;

/** The native Adam on offer, or undefined: the optimiser then runs its JavaScript loop. */
export function nativeAdam(): NativeAdam | undefined {
  return offered;
}

/** Offers `f` to every following update (undefined withdraws it). */
export function offerNativeAdam(f: NativeAdam | undefined): void {
  offered = f;
}
