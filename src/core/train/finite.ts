/** Finiteness of gradients: the check every replica makes, and the error a non-finite one raises (nothing applied). */
export class NonFiniteError extends Error {}

/** Whether v[from, from + n) holds no NaN or infinity. */
export function allFinite(v: Float32Array, from = 0, n = v.length - from): boolean {
  // x * 0 is ±0 for finite x and NaN for NaN/Inf, so the sum is 0 iff all are finite: no
  // branch per element (about twice as fast as testing each one).
  let s = 0;
  for (let i = from, end = from + n; i < end; i++) s += v[i] * 0;
  return s === 0;
}
