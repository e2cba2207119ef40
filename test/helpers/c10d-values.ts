/** The vectors c10d.test.ts all-reduces, made alike by the test and by each rank (c10d-peer.ts). */
import { createHash } from 'node:crypto';
import { Rng, Stream } from '../../src/core/rng.js';

/**
 * 'normal': float32s over seven decades, whose two-term sums round (a + b is commutative, so its
 * float32 rounding is the same in whichever order a rank adds). 'dyadic': multiples of 1/64 in
 * [-15.6, 15.6], whose sums over a few ranks are exact, so equal in any order.
 */
export type ValueKind = 'normal' | 'dyadic';

export function rankValues(kind: ValueKind, n: number, seed: number, rank: number): Float32Array {
  const rng = new Rng(seed, Stream.Test, rank);
  if (kind === 'normal') return Float32Array.from(rng.normal(n), (v, i) => v * 10 ** ((i % 7) - 3));
  return Float32Array.from({ length: n }, () => (rng.int(2001) - 1000) / 64);
}

/** The sum over ranks 0..world-1, each term and partial sum rounded to float32 as it is added. */
export function expectedSum(kind: ValueKind, n: number, seed: number, world: number): Float32Array {
  const sum = rankValues(kind, n, seed, 0);
  for (let r = 1; r < world; r++) {
    const v = rankValues(kind, n, seed, r);
    for (let i = 0; i < n; i++) sum[i] += v[i]; // stored as float32: Math.fround(sum[i] + v[i])
  }
  return sum;
}

export function digest(v: Float32Array): string {
  return createHash('sha256')
    .update(new Uint8Array(v.buffer, v.byteOffset, v.byteLength))
    .digest('hex');
}
