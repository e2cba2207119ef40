/**
 * One worker's part in the all-reduce of one step (one plan, one membership epoch).
 *
 * The flat gradient of P floats is cut into N contiguous owner ranges (rank r owns range
 * r). Reduce-scatter: every rank sends its gradient sum over range r to rank r, in chunks
 * of at most chunkFloats (under the broker's max_payload). Each owner adds the N
 * contributions in rank order 0, 1, ..., N-1 (never in arrival order, so the float sum is
 * independent of timing), divides by the global batch, and publishes its averaged range
 * once on the gather subject (all-gather; the broker fans it out). Per step a worker sends
 * about (N-1)/N + 1/N of the gradient and receives 2(N-1)/N of it, whatever N is.
 *
 * Every chunk's position and length follow from (P, N, chunkFloats), so a receiver checks
 * them exactly; NaN/Inf payloads, duplicates and chunks from non-members are rejected
 * without touching any buffer that the update reads.
 */
import type { GradSum } from '../core/train/api.js';
import { encode, f32Bytes, Phase, readF32Into, splitRange, subjects, WireError, type EnvelopeOf } from '../coordinator/wire.js';

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

export class AllReduce {
  readonly rank: number;
  readonly owners: number[];
  bytesSent = 0;
  bytesReceived = 0;
  private readonly n: number;
  private readonly mine: [number, number];
  private readonly contrib: (Float32Array | undefined)[];
  private readonly seen: Set<number>[];
  private readonly lossSums: number[];
  private readonly counts: number[];
  private contribLeft: number;
  private gatherLeft: number;
  private readonly gatherSeen = new Set<number>();
  private readonly mean: Float32Array;
  private local?: GradSum;
  private reducedMine = false;
  private resolve!: (r: Reduced) => void;
  readonly done: Promise<Reduced>;

  constructor(private readonly ctx: StepContext, private readonly publish: Publish) {
    this.n = ctx.members.length;
    this.rank = ctx.members.indexOf(ctx.me);
    if (this.rank < 0) throw new Error(`worker ${ctx.me} is not a member of step ${ctx.step}`);
    this.owners = splitRange(ctx.numParams, this.n);
    this.mine = [this.owners[this.rank], this.owners[this.rank + 1]];
    this.contrib = new Array(this.n);
    this.seen = Array.from({ length: this.n }, () => new Set<number>());
    this.lossSums = new Array(this.n).fill(0);
    this.counts = new Array(this.n).fill(0);
    const chunksOf = (r: number) => Math.ceil((this.owners[r + 1] - this.owners[r]) / ctx.chunkFloats);
    this.contribLeft = (this.n - 1) * chunksOf(this.rank);
    this.gatherLeft = 0;
    for (let r = 0; r < this.n; r++) if (r !== this.rank) this.gatherLeft += chunksOf(r);
    this.mean = new Float32Array(ctx.numParams);
    this.done = new Promise((r) => (this.resolve = r));
  }

  private header() {
    return { run: this.ctx.run, worker: this.ctx.me, step: this.ctx.step, membershipEpoch: this.ctx.mepoch, session: this.ctx.session };
  }

  /** Chunks [offset, length] of owner range r. */
  private *chunks(r: number): Generator<[number, number]> {
    const [a, b] = [this.owners[r], this.owners[r + 1]];
    for (let o = a; o < b; o += this.ctx.chunkFloats) yield [o, Math.min(this.ctx.chunkFloats, b - o)];
  }

  /** Our gradient sum is ready: send each owner its range, and reduce ours if possible. */
  setLocal(g: GradSum): void {
    if (g.grad.length !== this.ctx.numParams) throw new Error(`gradient has ${g.grad.length} values, the plan says ${this.ctx.numParams}`);
    this.local = g;
    this.lossSums[this.rank] = g.lossSum;
    this.counts[this.rank] = g.count;
    this.contrib[this.rank] = g.grad.subarray(this.mine[0], this.mine[1]);
    for (let r = 0; r < this.n; r++) {
      if (r === this.rank) continue;
      const to = subjects.worker(this.ctx.run, this.ctx.members[r]);
      for (const [o, len] of this.chunks(r)) {
        const msg = encode(this.header(), 'grad', {
          phase: Phase.REDUCE, owner: r, senderRank: this.rank, offset: o, data: f32Bytes(g.grad, o, len), lossSum: g.lossSum, count: g.count,
        });
        this.bytesSent += msg.byteLength;
        this.publish(to, msg);
      }
    }
    this.maybeReduce();
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
    if (c.phase === Phase.REDUCE) this.acceptReduce(sender, c.offset, c, a);
    else this.acceptGather(c.offset, c);
    this.bytesReceived += size;
  }

  private acceptReduce(sender: number, offset: number, c: EnvelopeOf<'grad'>['body'], a: number): void {
    if (this.seen[sender].has(offset)) throw new WireError('bad_chunk', `duplicate chunk at ${offset} from rank ${sender}`);
    if (!Number.isFinite(c.lossSum) || c.count < 1) throw new WireError('non_finite', `loss sum ${c.lossSum}, count ${c.count}`);
    const buf = (this.contrib[sender] ??= new Float32Array(this.mine[1] - this.mine[0]));
    if (!readF32Into(c.data, buf, offset - a)) {
      buf.fill(0, offset - a, offset - a + (c.data.byteLength >> 2));
      throw new WireError('non_finite', `NaN/Inf in reduce chunk at ${offset} from rank ${sender}`);
    }
    this.seen[sender].add(offset);
    this.lossSums[sender] = c.lossSum;
    this.counts[sender] = c.count;
    this.contribLeft--;
    this.maybeReduce();
  }

  private acceptGather(offset: number, c: EnvelopeOf<'grad'>['body']): void {
    if (this.gatherSeen.has(offset)) throw new WireError('bad_chunk', `duplicate gather chunk at ${offset}`);
    if (!Number.isFinite(c.lossSum) || c.count !== this.ctx.globalBatch)
      throw new WireError('non_finite', `gather chunk with loss sum ${c.lossSum}, count ${c.count}`);
    // Decode into a scratch view first: a NaN chunk must not reach `mean`.
    const tmp = new Float32Array(c.data.byteLength >> 2);
    if (!readF32Into(c.data, tmp, 0)) throw new WireError('non_finite', `NaN/Inf in gather chunk at ${offset}`);
    this.mean.set(tmp, offset);
    this.gatherSeen.add(offset);
    this.gatherLeft--;
    this.maybeFinish();
  }

  /** Owner: all contributions in, so add them in rank order, average, publish. */
  private maybeReduce(): void {
    if (this.reducedMine || !this.local || this.contribLeft > 0) return;
    this.reducedMine = true;
    const [a, b] = this.mine;
    const sum = Float32Array.from(this.contrib[0]!);
    for (let r = 1; r < this.n; r++) {
      const c = this.contrib[r]!;
      for (let i = 0; i < sum.length; i++) sum[i] += c[i];
    }
    let lossSum = 0;
    let count = 0;
    for (let r = 0; r < this.n; r++) {
      lossSum += this.lossSums[r];
      count += this.counts[r];
    }
    if (count !== this.ctx.globalBatch) throw new Error(`step ${this.ctx.step}: shards add up to ${count} samples, the plan says ${this.ctx.globalBatch}`);
    const avg = meanOf(sum, count);
    this.mean.set(avg, a);
    this.lossTotal = lossSum;
    const to = subjects.gather(this.ctx.run);
    for (let o = a; this.n > 1 && o < b; o += this.ctx.chunkFloats) {
      const len = Math.min(this.ctx.chunkFloats, b - o);
      const msg = encode(this.header(), 'grad', { phase: Phase.GATHER, owner: this.rank, senderRank: this.rank, offset: o, data: f32Bytes(this.mean, o, len), lossSum, count });
      this.bytesSent += msg.byteLength;
      this.publish(to, msg);
    }
    this.maybeFinish();
  }

  private lossTotal = 0;

  private maybeFinish(): void {
    if (!this.reducedMine || this.gatherLeft > 0) return;
    // Every owner computes the same rank-ordered loss sum; ours is as good as any.
    this.resolve({ mean: this.mean, lossSum: this.lossTotal, count: this.ctx.globalBatch });
  }
}
