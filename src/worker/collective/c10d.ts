/**
 * Transports `gloo` and `nccl`: a c10d process group of the plan's members (the engine
 * under PyTorch DDP), in the torch addon. One group per membership epoch: the plan names
 * the members in rank order and rank 0's store (every worker hosts a rendezvous store for its
 * whole life, bound to `host` only, and announces host:port in its Join), and the group's keys in that store are
 * prefixed with (run, coordinator session, membership epoch), so groups of different epochs
 * never meet. Nothing here needs configuration beyond the address to bind: the control
 * plane carries the rest.
 *
 * When membership changes the coordinator plans a new epoch: the old group is dropped
 * (closed off the JS thread once its pending work ends or fails) and a new one formed. A
 * peer that dies mid-collective makes the survivors' all-reduce fail (its sockets close;
 * a peer that hangs instead is given up after `timeoutMs`), and the coordinator re-plans.
 *
 * Security: the c10d data plane has no authentication (neither has DDP's). The store and
 * Gloo bind only to `host`/`iface`; their addresses travel only over the (authenticated)
 * control plane; deploy/k8s has a NetworkPolicy that lets only the run's workers reach them.
 */
import { createSocket } from 'node:dgram';
import { lookup } from 'node:dns/promises';
import type { GradSink, GradSum } from '../../core/train/api.js';
import { allFinite, NonFiniteError } from '../../core/train/finite.js';
import { ProcessGroup, StoreServer, c10dInfo } from './process-group.js';
import type { Collective, StepContext } from './index.js';

export interface C10dOptions {
  /** Address the store and Gloo bind to and announce. */
  host: string;
  /** Store port (0: any free one). */
  port?: number;
  /** Network interface for Gloo (default: the one `host` is on). */
  iface?: string;
  /** A collective (and a rendezvous) waiting longer than this on a peer fails. */
  timeoutMs: number;
  /** The worker's GPU (NCCL is offered only with one). */
  cuda?: boolean;
}

/**
 * Bucket bounds, DDP's rule: parameters taken from the last to the first (the order the backward
 * pass finishes them), a bucket closed at a parameter's start once it holds at least `b` floats;
 * the first parameters, whatever is left, make the last bucket. Returned as bucket i =
 * [cuts[i + 1], cuts[i]), so cuts runs from numParams down to 0.
 */
export function bucketCuts(numParams: number, paramStarts: readonly number[], b: number): number[] {
  const cuts = [numParams];
  for (let i = paramStarts.length - 1; i > 0; i--) {
    const s = paramStarts[i];
    if (s > 0 && s < cuts[cuts.length - 1] && cuts[cuts.length - 1] - s >= b) cuts.push(s);
  }
  cuts.push(0);
  return cuts;
}

/**
 * One step's buckets (bucketCuts): each handed to `send` (the group's all-reduce) once the
 * backward pass has finished it, in order 0, 1, ...
 */
export class Buckets implements GradSink {
  readonly grad: Float32Array;
  private readonly left: Float64Array;
  private next = 0;
  /** A bucket was not finite: it and every later one stayed home. */
  bad = false;
  readonly works: Promise<void>[] = [];

  /** `reuse`: the last step's buffer, when nothing can still write into it (a fresh one otherwise). */
  constructor(
    private readonly send: (bucket: Float32Array) => Promise<void>,
    numParams: number,
    private readonly cuts: number[],
    reuse?: Float32Array,
  ) {
    this.grad = reuse?.length === numParams ? reuse : new Float32Array(numParams);
    this.left = Float64Array.from({ length: cuts.length - 1 }, (_, i) => cuts[i] - cuts[i + 1]);
  }

  ready(offset: number, size: number): void {
    const last = offset + size;
    const { cuts, left } = this;
    // buckets run downwards: skip those above the range, stop at the first below it
    for (let i = 0; i < left.length && cuts[i] > offset; i++)
      if (cuts[i + 1] < last) left[i] -= Math.min(cuts[i], last) - Math.max(cuts[i + 1], offset);
    this.launch(false);
  }

  /** Starts the finished buckets in order (all of them at the end). Every rank issues the same all-reduces in the same order. */
  launch(all: boolean): void {
    while (!this.bad && this.next < this.left.length && (all || this.left[this.next] <= 0)) {
      const v = this.grad.subarray(this.cuts[this.next + 1], this.cuts[this.next]);
      // A non-finite bucket goes nowhere, nor does any after it: the worker reports its own failure.
      if (!allFinite(v)) return void (this.bad = true);
      const w = this.send(v);
      w.catch(() => {}); // (awaited in reduce; a step abandoned before it must not leave a rejection unhandled)
      this.works.push(w);
      this.next++;
    }
  }
}

/** Whether this process can take part in `transport`, and if not, one line saying why. */
export function c10dAvailable(transport: 'gloo' | 'nccl'): { ok: boolean; why: string } {
  const info = c10dInfo();
  const ok = transport === 'gloo' ? info.gloo : info.nccl;
  return { ok, why: ok ? '' : info.why || `the torch addon has no c10d ${transport}` };
}

/** A worker's c10d side: its store, the transports it offers, what its Join announces. */
export interface C10dSide {
  collectives: Partial<Record<'gloo' | 'nccl', Collective>>;
  dataPlane: { host: string; storePort: number; note: string };
  close(): void;
}

/**
 * Starts this worker's store and the c10d transports its addon has (none, with the reason
 * in `dataPlane.note`, when it has none: the worker then offers nats only).
 */
export async function startC10d(o: C10dOptions): Promise<C10dSide> {
  const gloo = c10dAvailable('gloo');
  const nccl = c10dAvailable('nccl');
  if (!gloo.ok && !(nccl.ok && o.cuda))
    return { collectives: {}, dataPlane: { host: o.host, storePort: 0, note: gloo.why }, close: () => {} };
  const store = await StoreServer.listen(o.host, o.port ?? 0);
  const collectives: C10dSide['collectives'] = {};
  if (gloo.ok) collectives.gloo = new C10dCollective('gloo', o);
  if (nccl.ok && o.cuda) collectives.nccl = new C10dCollective('nccl', o);
  return {
    collectives,
    dataPlane: { host: o.host, storePort: store.port, note: gloo.ok ? '' : gloo.why },
    close: () => {
      for (const c of Object.values(collectives)) c?.close();
      store.close();
    },
  };
}

/**
 * The address this worker's data plane binds to: $SCOREFLOW_DATA_HOST, else 127.0.0.1 when
 * the broker is on this machine, else the local address of the route to the broker (a UDP
 * socket is "connected" to it, which sends nothing, and asked for its own address).
 */
export async function defaultDataHost(natsUrl: string): Promise<string> {
  if (process.env.SCOREFLOW_DATA_HOST) return process.env.SCOREFLOW_DATA_HOST;
  let host = '127.0.0.1';
  try {
    host = new URL(natsUrl.includes('://') ? natsUrl : `nats://${natsUrl}`).hostname.replace(/^\[(.*)\]$/, '$1');
  } catch {
    /* not a URL: loopback */
  }
  if (host === 'localhost' || /^127\./.test(host) || host === '::1') return '127.0.0.1';
  const { address } = await lookup(host);
  return new Promise((resolve) => {
    const s = createSocket(address.includes(':') ? 'udp6' : 'udp4');
    s.once('error', () => (s.close(), resolve('127.0.0.1')));
    s.connect(4222, address, () => {
      const local = s.address().address;
      s.close();
      resolve(local);
    });
  });
}

export class C10dCollective implements Collective {
  bytesSent = 0;
  bytesReceived = 0;
  private group?: { key: string; pg: Promise<ProcessGroup>; ready?: ProcessGroup };
  private ctx?: StepContext;
  private buckets?: Buckets;
  /**
   * The gradient buffer of the last step whose every bucket settled: the next step's sink reuses
   * it (4 MB less garbage per step). A step abandoned with buckets in flight never hands its
   * buffer back, so no late all-reduce can write into a later step's gradient.
   */
  private spare?: Float32Array;
  /** The bucket bounds, kept while the replica's layout stays. */
  private cuts?: { paramStarts: readonly number[]; numParams: number; cuts: number[] };

  constructor(
    readonly transport: 'gloo' | 'nccl',
    private readonly opts: C10dOptions,
  ) {}

  begin(ctx: StepContext): void {
    this.ctx = ctx;
    this.buckets = undefined;
    const key = `sf/${ctx.run}/${ctx.session}/${ctx.membershipEpoch}`;
    if (this.group?.key === key) return;
    this.dropGroup();
    const [storeHost, storePort] = splitHostPort(ctx.store);
    // Forming the group is a rendezvous with every member: start it now, while the gradient is computed.
    const pg = ProcessGroup.create({
      backend: this.transport,
      storeHost,
      storePort,
      prefix: key,
      rank: ctx.members.indexOf(ctx.me),
      worldSize: ctx.members.length,
      timeoutMs: this.opts.timeoutMs,
      iface: this.opts.iface,
      device: this.transport === 'nccl' ? 0 : undefined,
    });
    pg.catch(() => {}); // (a failed rendezvous surfaces in reduce)
    const group: NonNullable<typeof this.group> = { key, pg };
    void pg.then(
      (g) => (group.ready = g),
      () => {},
    );
    this.group = group;
  }

  /**
   * Buckets that go out while the backward pass runs, once the epoch's group has formed (an
   * all-reduce is issued from inside the backward pass, synchronously, so it needs the group
   * itself, not its promise; the first step of an epoch reduces after the backward pass).
   */
  sink(): GradSink | undefined {
    // Overlap: the plan's bucket size (bucketCuts: whole parameters, from the last layers, whose
    // gradients the backward pass finishes first), each bucket all-reduced as soon as the backward
    // pass has finished it; 0: one all-reduce of the whole vector after it.
    const b = this.ctx?.bucketFloats;
    const pg = this.group?.ready;
    if (!b || !pg || !this.ctx) return undefined;
    const { numParams, paramStarts } = this.ctx;
    if (this.cuts?.paramStarts !== paramStarts || this.cuts.numParams !== numParams)
      this.cuts = { paramStarts, numParams, cuts: bucketCuts(numParams, paramStarts, b) };
    this.buckets = new Buckets((v) => pg.allreduceSum(v), this.ctx.numParams, this.cuts.cuts, this.spare);
    this.spare = undefined;
    return this.buckets;
  }

  async reduce(local: GradSum): Promise<Float32Array> {
    const g = this.group;
    const ctx = this.ctx;
    if (!g || !ctx) throw new Error('reduce before begin');
    if (local.grad.length !== ctx.numParams) throw new Error(`gradient has ${local.grad.length} values, the plan says ${ctx.numParams}`);
    const buckets = this.buckets;
    this.buckets = undefined;
    if (buckets && buckets.grad === local.grad) {
      buckets.launch(true);
      if (buckets.bad) throw new NonFiniteError('a bucket of the local gradient has NaN or infinite values');
      await Promise.all(buckets.works);
      // (the caller takes the mean in place and applies it before its next step asks for a sink)
      this.spare = buckets.grad;
    } else await (await g.pg).allreduceSum(local.grad);
    // A ring all-reduce moves 2(N-1)/N of the vector each way per worker (Gloo's and NCCL's algorithms for this size).
    const n = ctx.members.length;
    this.bytesSent = this.bytesReceived = n > 1 ? Math.round((2 * (n - 1) * 4 * ctx.numParams) / n) : 0;
    return local.grad;
  }

  private dropGroup(): void {
    const g = this.group;
    this.group = undefined;
    void g?.pg.then(
      (pg) => pg.close(),
      () => {},
    );
  }

  close(): void {
    this.dropGroup();
  }
}

function splitHostPort(s: string): [string, number] {
  const i = s.lastIndexOf(':');
  const port = Number(s.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`bad c10d store address '${s}' in the plan`);
  return [s.slice(0, i).replace(/^\[(.*)\]$/, '$1'), port];
}
