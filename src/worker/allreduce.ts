/**
 * One worker's part in the all-reduce of one step (one plan, one membership epoch).
 *
 * The flat gradient of P floats is cut into N contiguous owner ranges (rank r owns range
 * r), and each range into chunks of at most chunkFloats (under the broker's max_payload).
 * Reduce-scatter: every rank sends its gradient sum over range r to rank r. The owner folds
 * the N contributions of each chunk in rank order 0, 1, ..., N-1 (never in arrival order,
 * so the float sum is independent of timing): a contribution that is next in rank order is
 * added straight from the received bytes, one that arrives early is kept until its turn.
 * As soon as a chunk has all N contributions it is divided by the global batch (fused
 * with the last addition) and published on the gather subject (all-gather; the broker
 * fans it out), so the gather of early chunks overlaps the reduce of later ones. Per step a worker sends about
 * (N-1)/N + 1/N of the gradient and receives 2(N-1)/N of it, whatever N is.
 *
 * Every chunk's position and length follow from (P, N, chunkFloats), so a receiver checks
 * them exactly; NaN/Inf payloads, duplicates, inconsistent counts and chunks from
 * non-members are rejected before they touch any buffer that the update reads.
 */
import type { GradSum } from '../core/train/api.js';
import { allFinite, bytesAsF32, encodeGrad, Phase, splitRange, subjects, WireError, type EnvelopeOf } from '../coordinator/wire.js';

export interface StepContext {
  run: string;
  me: string;
  step: number;
  mepoch: number;
  members: string[];
  numParams: number;
  chunkFloats: number;
  globalBatch: number;
  session: number;
  /** The plan's shard starts (N+1 values): when given, every contribution's count is checked against its shard. */
  shardStart?: number[];
}

export interface Reduced {
  mean: Float32Array;
  lossSum: number;
  count: number;
}

/** The averaged gradient element: one rounding, identical to what `scoreflow train` does. */
export function meanOf(sum: Float32Array, count: number): Float32Array {
  const out = new Float32Array(sum.length);
  for (let i = 0; i < sum.length; i++) out[i] = sum[i] / count;
  return out;
}

export type Publish = (subject: string, bytes: Uint8Array) => void;

/**
 * Averaged-gradient buffers handed back after the update has read them (`recycleMean`), so
 * that a worker does not allocate (and the GC chase) a parameter-sized buffer every step.
 */
const spareMeans: Float32Array[] = [];

/** The caller is done with a Reduced.mean (the update has read it); a later all-reduce may reuse it. */
export function recycleMean(buf: Float32Array): void {
  if (spareMeans.length < 2 && !spareMeans.includes(buf)) spareMeans.push(buf);
}

function takeMean(n: number): Float32Array {
  const i = spareMeans.findIndex((b) => b.length === n);
  // Every element is written before the result is handed out, so stale values are harmless.
  return i >= 0 ? spareMeans.splice(i, 1)[0] : new Float32Array(n);
}

// The hot loops live in small functions of their own, so that V8 optimises each loop once
// instead of on-stack-replacing it inside a bigger function and deoptimising at the first
// cold line after it (which it did, once per chunk).

/** acc += src, element by element in float32: one step of the rank-ordered sum. */
function add(acc: Float32Array, src: Float32Array): void {
  for (let i = 0, n = acc.length; i < n; i++) acc[i] += src[i];
}

/**
 * The last step of the sum fused with the average: the float32 sum, then the quotient
 * rounded once, exactly as meanOf does it with the sum stored first.
 */
function addDivide(acc: Float32Array, src: Float32Array, count: number): void {
  for (let i = 0, n = acc.length; i < n; i++) acc[i] = Math.fround(acc[i] + src[i]) / count;
}

function copyDivide(acc: Float32Array, src: Float32Array, count: number): void {
  for (let i = 0, n = acc.length; i < n; i++) acc[i] = src[i] / count;
}

/** Folds contribution r of n into acc (rank order); the last one also divides by count. */
function fold(acc: Float32Array, src: Float32Array, r: number, n: number, count: number): void {
  if (r === n - 1) (r === 0 ? copyDivide : addDivide)(acc, src, count);
  else if (r === 0) acc.set(src);
  else add(acc, src);
}

export class AllReduce {
  readonly rank: number;
  readonly owners: number[];
  bytesSent = 0;
  bytesReceived = 0;
  private readonly n: number;
  private readonly mine: [number, number];
  /** Per chunk of our range: the next rank to fold, and contributions that came early. */
  private readonly next: Int32Array;
  private readonly early: (Float32Array | undefined)[][];
  /** Per chunk of our range and sender: received (duplicates are rejected). */
  private readonly seen: Uint8Array;
  private readonly lossSums: number[];
  private readonly counts: number[];
  private chunksLeft: number;
  private gatherLeft: number;
  private readonly gatherSeen: Uint8Array;
  private readonly maxChunks: number;
  /** The averaged gradient; our own range doubles as the accumulator of the rank-ordered sum. */
  private readonly mean: Float32Array;
  /** For payloads that are not 4-aligned in their buffer (copied before use). */
  private scratchBuf?: Float32Array;
  private lossTotal = 0;
  private haveLocal = false;
  private resolve!: (r: Reduced) => void;
  readonly done: Promise<Reduced>;

  constructor(private readonly ctx: StepContext, private readonly publish: Publish) {
    this.n = ctx.members.length;
    this.rank = ctx.members.indexOf(ctx.me);
    if (this.rank < 0) throw new Error(`worker ${ctx.me} is not a member of step ${ctx.step}`);
    if (ctx.shardStart && ctx.shardStart.length !== this.n + 1) throw new Error(`plan has ${ctx.shardStart.length} shard starts for ${this.n} members`);
    this.owners = splitRange(ctx.numParams, this.n);
    this.mine = [this.owners[this.rank], this.owners[this.rank + 1]];
    const chunks = this.chunksOf(this.rank);
    this.next = new Int32Array(chunks);
    this.early = Array.from({ length: chunks }, () => new Array<Float32Array | undefined>(this.n));
    this.seen = new Uint8Array(chunks * this.n);
    this.lossSums = new Array<number>(this.n).fill(NaN);
    this.counts = new Array<number>(this.n).fill(0);
    this.chunksLeft = chunks;
    this.gatherLeft = 0;
    for (let r = 0; r < this.n; r++) if (r !== this.rank) this.gatherLeft += this.chunksOf(r);
    this.maxChunks = 0;
    for (let r = 0; r < this.n; r++) this.maxChunks = Math.max(this.maxChunks, this.chunksOf(r));
    this.gatherSeen = new Uint8Array(this.maxChunks * this.n);
    this.mean = takeMean(ctx.numParams);
    this.done = new Promise((r) => (this.resolve = r));
  }

  private scratch(): Float32Array {
    return (this.scratchBuf ??= new Float32Array(Math.min(this.ctx.chunkFloats, this.ctx.numParams)));
  }

  private chunksOf(r: number): number {
    return Math.ceil((this.owners[r + 1] - this.owners[r]) / this.ctx.chunkFloats);
  }

  private header() {
    return { run: this.ctx.run, worker: this.ctx.me, step: this.ctx.step, membershipEpoch: this.ctx.mepoch, session: this.ctx.session };
  }

  /** Chunk j of owner range r: [offset, length]. */
  private chunk(r: number, j: number): [number, number] {
    const o = this.owners[r] + j * this.ctx.chunkFloats;
    return [o, Math.min(this.ctx.chunkFloats, this.owners[r + 1] - o)];
  }

  /** Our gradient sum is ready: send each owner its range, then fold it into ours. */
  setLocal(g: GradSum): void {
    if (g.grad.length !== this.ctx.numParams) throw new Error(`gradient has ${g.grad.length} values, the plan says ${this.ctx.numParams}`);
    if (this.haveLocal) throw new Error('setLocal called twice');
    this.haveLocal = true;
    this.lossSums[this.rank] = g.lossSum;
    this.counts[this.rank] = g.count;
    const h = this.header();
    // Chunk-major, starting at the next rank: every owner gets its first chunk early.
    for (let j = 0; j < this.maxChunks; j++) {
      for (let k = 1; k < this.n; k++) {
        const r = (this.rank + k) % this.n;
        if (j >= this.chunksOf(r)) continue;
        const [o, len] = this.chunk(r, j);
        const msg = encodeGrad(h, { phase: Phase.REDUCE, owner: r, senderRank: this.rank, offset: o, lossSum: g.lossSum, count: g.count }, g.grad, o, len);
        this.bytesSent += msg.byteLength;
        this.publish(subjects.worker(this.ctx.run, this.ctx.members[r]), msg);
      }
    }
    for (let j = 0; j < this.next.length; j++) {
      const [o, len] = this.chunk(this.rank, j);
      this.early[j][this.rank] = g.grad.subarray(o, o + len);
      this.advance(j);
    }
  }

  /** Takes a chunk of this step and epoch; throws WireError if it is not one we expect. */
  accept(env: EnvelopeOf<'grad'>, size: number): void {
    const c = env.body;
    const sender = this.ctx.members.indexOf(env.worker);
    if (sender < 0) throw new WireError('unknown_worker', `chunk from ${env.worker}, not a member of step ${this.ctx.step}`);
    if (sender === this.rank) throw new WireError('unexpected', 'chunk claims to come from ourselves');
    const owner = c.phase === Phase.REDUCE ? this.rank : sender;
    if ((c.phase !== Phase.REDUCE && c.phase !== Phase.GATHER) || c.owner !== owner || (c.phase === Phase.REDUCE && c.senderRank !== sender))
      throw new WireError('bad_chunk', `phase ${c.phase} owner ${c.owner} sender ${c.senderRank} from rank ${sender}`);
    const [a, b] = [this.owners[owner], this.owners[owner + 1]];
    const len = Math.min(this.ctx.chunkFloats, b - c.offset);
    if (c.offset < a || c.offset >= b || (c.offset - a) % this.ctx.chunkFloats !== 0 || c.data.byteLength !== len * 4)
      throw new WireError('bad_chunk', `offset ${c.offset} with ${c.data.byteLength} bytes does not fit range [${a}, ${b}) of rank ${owner}`);
    const j = (c.offset - a) / this.ctx.chunkFloats;
    if (c.phase === Phase.REDUCE) this.acceptReduce(sender, j, c);
    else this.acceptGather(owner, j, c);
    this.bytesReceived += size;
  }

  private acceptReduce(sender: number, j: number, c: EnvelopeOf<'grad'>['body']): void {
    if (this.seen[j * this.n + sender]) throw new WireError('bad_chunk', `duplicate chunk at ${c.offset} from rank ${sender}`);
    if (!Number.isFinite(c.lossSum) || c.count < 1) throw new WireError('non_finite', `loss sum ${c.lossSum}, count ${c.count}`);
    const shard = this.ctx.shardStart ? this.ctx.shardStart[sender + 1] - this.ctx.shardStart[sender] : undefined;
    if (shard !== undefined && c.count !== shard) throw new WireError('bad_chunk', `rank ${sender} claims ${c.count} samples, its shard has ${shard}`);
    if (this.counts[sender] !== 0 && (c.count !== this.counts[sender] || !Object.is(c.lossSum, this.lossSums[sender])))
      throw new WireError('bad_chunk', `rank ${sender}'s chunks disagree on its loss sum or count`);
    const v = bytesAsF32(c.data, c.data.byteOffset % 4 === 0 ? undefined : this.scratch());
    if (!allFinite(v)) throw new WireError('non_finite', `NaN/Inf in reduce chunk at ${c.offset} from rank ${sender}`);
    this.seen[j * this.n + sender] = 1;
    this.lossSums[sender] = c.lossSum;
    this.counts[sender] = c.count;
    if (this.next[j] === sender) {
      // Next in rank order: add straight from the received bytes.
      this.foldInto(j, v, sender);
      this.advance(j);
    } else {
      // Early: keep a copy (the received bytes belong to the connection) until its turn.
      this.early[j][sender] = v.slice();
    }
  }

  private acceptGather(owner: number, j: number, c: EnvelopeOf<'grad'>['body']): void {
    const slot = owner + j * this.n;
    if (this.gatherSeen[slot]) throw new WireError('bad_chunk', `duplicate gather chunk at ${c.offset}`);
    if (!Number.isFinite(c.lossSum) || c.count !== this.ctx.globalBatch)
      throw new WireError('non_finite', `gather chunk with loss sum ${c.lossSum}, count ${c.count}`);
    // Check before copying: a NaN chunk must not reach `mean`.
    const v = bytesAsF32(c.data, c.data.byteOffset % 4 === 0 ? undefined : this.scratch());
    if (!allFinite(v)) throw new WireError('non_finite', `NaN/Inf in gather chunk at ${c.offset}`);
    this.mean.set(v, c.offset);
    this.gatherSeen[slot] = 1;
    this.gatherLeft--;
    this.maybeFinish();
  }

  private foldInto(j: number, v: Float32Array, r: number): void {
    const [o, len] = this.chunk(this.rank, j);
    fold(this.mean.subarray(o, o + len), v, r, this.n, this.ctx.globalBatch);
    this.next[j] = r + 1;
  }

  /** Folds whatever is ready in rank order; a chunk with all N contributions is averaged and published. */
  private advance(j: number): void {
    const early = this.early[j];
    for (let r = this.next[j]; r < this.n; r = this.next[j]) {
      const v = early[r];
      if (!v) return;
      early[r] = undefined;
      this.foldInto(j, v, r);
    }
    if (this.next[j] !== this.n) return;
    this.next[j] = this.n + 1; // done
    let lossSum = 0;
    let count = 0;
    for (let r = 0; r < this.n; r++) {
      lossSum += this.lossSums[r];
      count += this.counts[r];
    }
    if (count !== this.ctx.globalBatch) throw new Error(`step ${this.ctx.step}: shards add up to ${count} samples, the plan says ${this.ctx.globalBatch}`);
    const [o, len] = this.chunk(this.rank, j);
    // (the last fold divided by the global batch: the chunk is averaged)
    this.lossTotal = lossSum;
    if (this.n > 1) {
      const msg = encodeGrad(this.header(), { phase: Phase.GATHER, owner: this.rank, senderRank: this.rank, offset: o, lossSum, count }, this.mean, o, len);
      this.bytesSent += msg.byteLength;
      this.publish(subjects.gather(this.ctx.run), msg);
    }
    this.chunksLeft--;
    this.maybeFinish();
  }

  private maybeFinish(): void {
    if (this.chunksLeft > 0 || this.gatherLeft > 0) return;
    // Every owner computes the same rank-ordered loss sum; ours is as good as any.
    this.resolve({ mean: this.mean, lossSum: this.lossTotal, count: this.ctx.globalBatch });
  }
}
