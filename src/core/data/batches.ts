/**
 * Which images make up global step k, as a pure function of (seed, k, batch size, n):
 * any worker can derive any step's batch without coordination, and a resumed run sees
 * exactly the batches it would have seen.
 *
 * Epoch e is a permutation of 0..n-1 drawn from Rng(seed, Stream.Shuffle, e), cut into
 * ceil(n / B) batches; the last may be short (like a PyTorch DataLoader with drop_last=False).
 */
import { Rng, Stream } from '../rng.js';
import type { StepBatch } from '../train/api.js';
import type { ImageSet } from './mnist.js';

function check(v: number, what: string, min: number): void {
  if (!Number.isSafeInteger(v) || v < min) throw new Error(`stepBatch: ${what} must be an integer >= ${min}, got ${v}`);
}

export function stepsPerEpoch(n: number, batchSize: number): number {
  check(n, 'n', 1);
  check(batchSize, 'batchSize', 1);
  return Math.ceil(n / batchSize);
}

// The permutation costs O(n) to draw and a run asks for it ~n/B times per epoch: keep the last one.
let cached: { seed: number; epoch: number; n: number; perm: Uint32Array } | undefined;

/** Epoch `epoch`'s shuffle of 0..n-1 (shared, do not modify). */
export function epochPermutation(seed: number, epoch: number, n: number): Uint32Array {
  check(seed, 'seed', Number.MIN_SAFE_INTEGER);
  check(epoch, 'epoch', 0);
  check(n, 'n', 1);
  if (cached?.seed !== seed || cached.epoch !== epoch || cached.n !== n) {
    cached = { seed, epoch, n, perm: new Rng(seed, Stream.Shuffle, epoch).permutation(n) };
  }
  return cached.perm;
}

/** The global batch of step `step` (0-based, counted across epochs). */
export function stepBatch(seed: number, step: number, batchSize: number, n: number): StepBatch {
  check(step, 'step', 0);
  const spe = stepsPerEpoch(n, batchSize);
  const epoch = Math.floor(step / spe);
  const start = (step % spe) * batchSize;
  const perm = epochPermutation(seed, epoch, n);
  // a copy, so callers may keep or modify it without touching the cache
  return { step, epoch, indices: perm.slice(start, Math.min(start + batchSize, n)) };
}

/**
 * The n+1 boundaries of n near-equal contiguous ranges of [0, total): range r is
 * [b[r], b[r+1]). The shards of a global batch (the coordinator's plan, GradPool's parts) and
 * the owner ranges of a gradient (the nats transport) are all cut by this one function.
 */
export function rangeBounds(total: number, n: number): number[] {
  const b: number[] = [];
  for (let r = 0; r <= n; r++) b.push(Math.floor((total * r) / n));
  return b;
}

/** The images at `indices`, concatenated (NCHW with C = 1), into `out` if given. */
export function gather(set: ImageSet, indices: ArrayLike<number>, out?: Float32Array): Float32Array {
  const size = set.h * set.w;
  const dst = out ?? new Float32Array(indices.length * size);
  if (dst.length !== indices.length * size) throw new Error(`gather: out has ${dst.length} values, need ${indices.length * size}`);
  for (let k = 0; k < indices.length; k++) {
    const i = indices[k];
    if (!Number.isInteger(i) || i < 0 || i >= set.n) throw new Error(`gather: index ${i} is outside ${set.source} (${set.n} images)`);
    dst.set(set.data.subarray(i * size, (i + 1) * size), k * size);
  }
  return dst;
}
