/**
 * Transport `nats`: the all-reduce of one step's gradient sums through the broker.
 *
 * The flat gradient of P floats is cut into N contiguous owner ranges (rank r owns range
 * r), and each range into chunks of at most chunkFloats (under the broker's max_payload).
 * Reduce-scatter: every rank sends its gradient sum over range r to rank r. The owner folds
 * the N contributions of each chunk in rank order 0, 1, ..., N-1 (never in arrival order,
 * so the float sum is independent of timing): a contribution that is next in rank order is
 * added straight from the received bytes, one that arrives early is kept until its turn.
 * As soon as a chunk has all N contributions it is published on the gather subject
 * (all-gather; the broker fans it out), so the gather of early chunks overlaps the reduce
 * of later ones. Per step a worker sends about (N-1)/N + 1/N of the gradient and receives
 * 2(N-1)/N of it, whatever N is. The result is the global *sum*; averaging is the
 * caller's (core/train/step.ts), as on every transport.
 *
 * Every chunk's position and length follow from (P, N, chunkFloats), so a receiver checks
 * them exactly; NaN/Inf payloads, duplicates, inconsistent counts and chunks from
 * non-members are rejected before they touch any buffer that the update reads.
 */
import type { GradSum } from '../../core/train/api.js';
import { allFinite } from '../../core/train/finite.js';
import { rangeBounds } from '../../protocol/chunking.js';
import { encodeGrad, leF32, Phase, WireError, type EnvelopeOf } from '../../protocol/envelope.js';
import { Sender } from '../../protocol/sequence.js';
import { subjects } from '../../protocol/subjects.js';
import { newer, type Collective, type StepContext } from './index.js';

export type Publish = (subject: string, bytes: Uint8Array) => void;

// The hot loops live in small functions of their own, so that V8 optimises each loop once
// instead of on-stack-replacing it inside a bigger function and deoptimising at the first
// cold line after it (which it did, once per chunk).

/** acc += src, element by element in float32: one step of the rank-ordered sum. */
function add(acc: Float32Array, src: Float32Array): void {
  for (let i = 0, n = acc.length; i < n; i++) acc[i] += src[i];
}

/** Folds contribution r into acc (rank order: r = 0 starts the sum). */
function fold(acc: Float32Array, src: Float32Array, r: number): void {
  if (r === 0) acc.set(src);
  else add(acc, src);
}

/** One step's reduce-scatter + all-gather (one plan, one membership epoch). */
export class AllReduce {
  readonly rank: number;
  readonly owners: number[];
  bytesSent = 0;
  bytesReceived = 0;
  private readonly n: number;
  /** Per chunk of our range: the next rank to fold, and contributions that came early. */
  private readonly next: Int32Array;
  private readonly early: (Float32Array | undefined)[][];
  /** Per chunk of our range and sender: received (duplicates are rejected). */
  private readonly seen: Uint8Array;
  private readonly counts: number[];
  private chunksLeft: number;
  private gatherLeft: number;
  private readonly gatherSeen: Uint8Array;
  private readonly maxChunks: number;
  /** The global sum; our own range doubles as the accumulator of the rank-ordered sum. */
  private readonly sum: Float32Array;
  /** For payloads that are not 4-aligned in their buffer (copied before use). */
  private scratchBuf?: Float32Array;
  private haveLocal = false;
  private resolve!: (sum: Float32Array) => void;
  readonly done: Promise<Float32Array>;

  constructor(
    readonly ctx: StepContext,
    private readonly publish: Publish,
    private readonly sender = Sender.now(),
  ) {
    this.n = ctx.members.length;
    this.rank = ctx.members.indexOf(ctx.me);
    if (this.rank < 0) throw new Error(`worker ${ctx.me} is not a member of step ${ctx.step}`);
    if (ctx.shardStart.length !== this.n + 1) throw new Error(`plan has ${ctx.shardStart.length} shard starts for ${this.n} members`);
    this.owners = rangeBounds(ctx.numParams, this.n);
    const chunks = this.chunksOf(this.rank);
    this.next = new Int32Array(chunks);
    this.early = Array.from({ length: chunks }, () => new Array<Float32Array | undefined>(this.n));
    this.seen = new Uint8Array(chunks * this.n);
    this.counts = new Array<number>(this.n).fill(0);
    this.chunksLeft = chunks;
    this.gatherLeft = 0;
    for (let r = 0; r < this.n; r++) if (r !== this.rank) this.gatherLeft += this.chunksOf(r);
    this.maxChunks = 0;
    for (let r = 0; r < this.n; r++) this.maxChunks = Math.max(this.maxChunks, this.chunksOf(r));
    this.gatherSeen = new Uint8Array(this.maxChunks * this.n);
    this.sum = new Float32Array(ctx.numParams);
    this.done = new Promise((r) => (this.resolve = r));
  }

  private scratch(): Float32Array {
    return (this.scratchBuf ??= new Float32Array(Math.min(this.ctx.chunkFloats, this.ctx.numParams)));
  }

  private chunksOf(r: number): number {
    return Math.ceil((this.owners[r + 1] - this.owners[r]) / this.ctx.chunkFloats);
  }

  /** Every chunk is stamped by the worker's Sender: a copy of it is refused as a duplicate. */
  private header() {
    return this.sender.stamp({
      run: this.ctx.run,
      worker: this.ctx.me,
      step: this.ctx.step,
      membershipEpoch: this.ctx.membershipEpoch,
      session: this.ctx.session,
    });
  }

  /** Chunk j of owner range r: [offset, length]. */
  private chunk(r: number, j: number): [number, number] {
    const o = this.owners[r] + j * this.ctx.chunkFloats;
    return [o, Math.min(this.ctx.chunkFloats, this.owners[r + 1] - o)];
  }

  private shard(r: number): number {
    return this.ctx.shardStart[r + 1] - this.ctx.shardStart[r];
  }

  /** Our gradient sum is ready: send each owner its range, then fold it into ours. */
  setLocal(g: GradSum): void {
    if (g.grad.length !== this.ctx.numParams) throw new Error(`gradient has ${g.grad.length} values, the plan says ${this.ctx.numParams}`);
    if (this.haveLocal) throw new Error('setLocal called twice');
    this.haveLocal = true;
    this.counts[this.rank] = g.count;
    // Chunk-major, starting at the next rank: every owner gets its first chunk early.
    for (let j = 0; j < this.maxChunks; j++) {
      for (let k = 1; k < this.n; k++) {
        const r = (this.rank + k) % this.n;
        if (j >= this.chunksOf(r)) continue;
        const [o, len] = this.chunk(r, j);
        const msg = encodeGrad(
          this.header(),
          { phase: Phase.REDUCE, owner: r, senderRank: this.rank, offset: o, count: g.count },
          g.grad,
          o,
          len,
        );
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
    if (
      (c.phase !== Phase.REDUCE && c.phase !== Phase.GATHER) ||
      c.owner !== owner ||
      (c.phase === Phase.REDUCE && c.senderRank !== sender)
    )
      throw new WireError('bad_chunk', `phase ${c.phase} owner ${c.owner} sender ${c.senderRank} from rank ${sender}`);
    const [a, b] = [this.owners[owner], this.owners[owner + 1]];
    const len = Math.min(this.ctx.chunkFloats, b - c.offset);
    if (c.offset < a || c.offset >= b || (c.offset - a) % this.ctx.chunkFloats !== 0 || c.data.byteLength !== len * 4)
      throw new WireError(
        'bad_chunk',
        `offset ${c.offset} with ${c.data.byteLength} bytes does not fit range [${a}, ${b}) of rank ${owner}`,
      );
    const j = (c.offset - a) / this.ctx.chunkFloats;
    if (c.phase === Phase.REDUCE) this.acceptReduce(sender, j, c);
    else this.acceptGather(owner, j, c);
    this.bytesReceived += size;
  }

  private acceptReduce(sender: number, j: number, c: EnvelopeOf<'grad'>['body']): void {
    if (this.seen[j * this.n + sender]) throw new WireError('duplicate', `chunk at ${c.offset} from rank ${sender} again`);
    if (c.count !== this.shard(sender))
      throw new WireError('bad_chunk', `rank ${sender} claims ${c.count} samples, its shard has ${this.shard(sender)}`);
    const v = leF32(c.data, c.data.byteOffset % 4 === 0 ? undefined : this.scratch());
    if (!allFinite(v)) throw new WireError('non_finite', `NaN/Inf in reduce chunk at ${c.offset} from rank ${sender}`);
    this.seen[j * this.n + sender] = 1;
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
    if (this.gatherSeen[slot]) throw new WireError('duplicate', `gather chunk at ${c.offset} again`);
    if (c.count !== this.ctx.globalBatch)
      throw new WireError('bad_chunk', `gather chunk for ${c.count} samples, the batch has ${this.ctx.globalBatch}`);
    // Check before copying: a NaN chunk must not reach the sum.
    const v = leF32(c.data, c.data.byteOffset % 4 === 0 ? undefined : this.scratch());
    if (!allFinite(v)) throw new WireError('non_finite', `NaN/Inf in gather chunk at ${c.offset}`);
    this.sum.set(v, c.offset);
    this.gatherSeen[slot] = 1;
    this.gatherLeft--;
    this.maybeFinish();
  }

  private foldInto(j: number, v: Float32Array, r: number): void {
    const [o, len] = this.chunk(this.rank, j);
    fold(this.sum.subarray(o, o + len), v, r);
    this.next[j] = r + 1;
  }

  /** Folds whatever is ready in rank order; a chunk with all N contributions is published. */
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
    const [o, len] = this.chunk(this.rank, j);
    if (this.n > 1) {
      const msg = encodeGrad(
        this.header(),
        { phase: Phase.GATHER, owner: this.rank, senderRank: this.rank, offset: o, count: this.ctx.globalBatch },
        this.sum,
        o,
        len,
      );
      this.bytesSent += msg.byteLength;
      this.publish(subjects.gather(this.ctx.run), msg);
    }
    this.chunksLeft--;
    this.maybeFinish();
  }

  private maybeFinish(): void {
    if (this.chunksLeft > 0 || this.gatherLeft > 0) return;
    this.resolve(this.sum);
  }
}

/** Chunks that overtook their plan are kept (up to this many) until it arrives. */
const EARLY_LIMIT = 4096;

/**
 * The nats transport as a worker uses it: one AllReduce per plan, gradient chunks routed
 * to it by the worker's subscription, chunks of a plan not yet seen kept until it comes.
 */
export class NatsCollective implements Collective {
  readonly transport = 'nats';
  private ar?: AllReduce;
  private early: { env: EnvelopeOf<'grad'>; size: number }[] = [];

  constructor(
    private readonly publish: Publish,
    private readonly sender: Sender,
    private readonly reject: (e: unknown) => void,
  ) {}

  get bytesSent(): number {
    return this.ar?.bytesSent ?? 0;
  }

  get bytesReceived(): number {
    return this.ar?.bytesReceived ?? 0;
  }

  begin(ctx: StepContext): void {
    const ar = new AllReduce(ctx, this.publish, this.sender);
    this.ar = ar;
    const early = this.early;
    this.early = [];
    for (const e of early) {
      if (e.env.step === ctx.step && e.env.membershipEpoch === ctx.membershipEpoch) this.accept(e.env, e.size);
      else if (newer(e.env, ctx)) this.early.push(e);
    }
  }

  reduce(local: GradSum): Promise<Float32Array> {
    if (!this.ar) throw new Error('reduce before begin');
    this.ar.setLocal(local);
    return this.ar.done;
  }

  /**
   * A gradient chunk. `current` is the plan in flight (if any) and `floor` the oldest
   * (membership epoch, step) that can still come; anything older is stale.
   */
  accept(env: EnvelopeOf<'grad'>, size: number, floor?: { membershipEpoch: number; step: number }): void {
    const ar = this.ar;
    const ctx = ar?.ctx;
    if (ar && ctx && env.step === ctx.step && env.membershipEpoch === ctx.membershipEpoch) {
      try {
        ar.accept(env, size);
      } catch (e) {
        this.reject(e);
      }
      return;
    }
    const later = ctx
      ? newer(env, ctx)
      : floor !== undefined &&
        (env.membershipEpoch > floor.membershipEpoch || (env.membershipEpoch === floor.membershipEpoch && env.step >= floor.step));
    if (!later || this.early.length >= EARLY_LIMIT)
      return this.reject(new WireError('stale_epoch', `grad chunk of step ${env.step} epoch ${env.membershipEpoch}`));
    this.early.push({ env, size });
  }

  close(): void {
    this.ar = undefined;
    this.early = [];
  }
}
