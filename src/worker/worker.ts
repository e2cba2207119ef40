/**
 * A cluster worker: joins a run, heartbeats, and for every StepPlan it is a member of runs
 * the plan's range of steps back to back: the gradient sum of its shard, the all-reduce,
 * the update as soon as the reduced sum is here, an ack that nobody waits for. Snapshots
 * of the whole state at the plan's snapshot points are its rollback points: the all-reduce
 * can complete on some members and fail on others, so after a failure the coordinator
 * re-plans from its last Commit (a snapshot every member holds), every member restores it
 * and re-runs the lost steps, which are functions of (seed, step): exact.
 */
import { randomInt } from 'node:crypto';
import { hostname } from 'node:os';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import type { NatsConnection, Subscription } from 'nats';
import { buildFingerprint } from '../cluster/fingerprint.js';
import { Telemetry } from '../telemetry/hub.js';
import { allFinite, NonFiniteError } from '../core/train/finite.js';
import {
  decode,
  encode,
  PROTOCOL_VERSION,
  VersionError,
  WireError,
  type BodyKind,
  type Bodies,
  type Envelope,
  type EnvelopeOf,
} from '../protocol/envelope.js';
import { sendState, StateInbox } from '../protocol/state-transfer.js';
import { ReplayGuard, Sender } from '../protocol/sequence.js';
import { checkId, subjects } from '../protocol/subjects.js';
import { rangeBounds } from '../protocol/chunking.js';
import type { Collective, TransportName } from './collective/index.js';
import { NatsCollective } from './collective/nats.js';
import type { Replica, ReplicaFactory, Snapshot } from './replica.js';

export interface WorkerOptions {
  nc: NatsConnection;
  run: string;
  /** Default: host-device-pid. */
  id?: string;
  device?: number;
  /** Compute threads, as the Join reports them: libtorch's intra-op threads on torch, pool threads on wasm/cpu. */
  threads?: number;
  backend?: string;
  factory: ReplicaFactory;
  heartbeatMs?: number;
  log?: (line: string) => void;
  telemetry?: Telemetry;
  /** c10d transports this worker offers beside nats, and where its store listens (Join). */
  collectives?: Partial<Record<'gloo' | 'nccl', Collective>>;
  dataPlane?: { host: string; storePort: number; note: string };
}

export interface WorkerResult {
  ok: boolean;
  reason: string;
  step: number;
}

interface Active {
  env: EnvelopeOf<'plan'>;
  collective: Collective;
}

/** Commit intervals a worker may run past the last Commit before it waits for one. */
const AHEAD = 3;

/** The worker's defaults; `worker start`'s flags read them from here. */
export const WORKER_DEFAULTS = { device: -1, threads: 1, backend: 'auto', heartbeatMs: 500 };

export function defaultWorkerId(device: number): string {
  const host = hostname()
    .replace(/[^A-Za-z0-9_-]/g, '_')
    .slice(0, 32);
  return `${host}-${device >= 0 ? 'gpu' + device : 'cpu'}-${process.pid}`;
}

export class Worker {
  readonly id: string;
  readonly telemetry: Telemetry;
  private readonly opts: Required<Omit<WorkerOptions, 'telemetry' | 'id' | 'collectives' | 'dataPlane'>> & Pick<WorkerOptions, 'dataPlane'>;
  private readonly nats: NatsCollective;
  private readonly sender = Sender.now();
  private readonly guard = new ReplayGuard();
  private readonly collectives: Map<TransportName, Collective>;
  private replica?: Replica;
  private configJson = '';
  private active?: Active;
  /** The last plan this worker is a member of (its epoch's Commits apply), and its rollback points by step. */
  private plan?: EnvelopeOf<'plan'>;
  private readonly snapshots = new Map<number, Snapshot>();
  /** A snapshot a Commit made obsolete, whose arrays the next snapshot is written into (nothing else holds it). */
  private spareSnapshot?: Snapshot;
  /** The last Commit (or the plan's first step), and the step loop waiting for the next one, if it is. */
  private durable = 0;
  private wake?: () => void;
  private membershipEpochFloor = 0;
  /** The coordinator session we were welcomed into (0: none yet), and our last Join's nonce. */
  private session = 0;
  private nonce = 0;
  private lastForeignHello = 0;
  private awaiting?: { transfer: string; committed: number };
  private readonly inbox = new StateInbox();
  private subs: Subscription[] = [];
  private timer?: NodeJS.Timeout;
  private idleSince = performance.now();
  private finish!: (r: WorkerResult) => void;
  private closed = false;
  private queue: Promise<void> = Promise.resolve();
  readonly done: Promise<WorkerResult>;

  constructor(opts: WorkerOptions) {
    this.opts = { ...WORKER_DEFAULTS, log: () => {}, ...opts };
    this.id = checkId('worker', opts.id ?? defaultWorkerId(this.opts.device));
    checkId('run', opts.run);
    this.telemetry = opts.telemetry ?? new Telemetry(this.opts.log);
    this.nats = new NatsCollective(
      (s, b) => this.opts.nc.publish(s, b),
      this.sender,
      (e) => this.reject(e),
    );
    this.collectives = new Map<TransportName, Collective>([['nats', this.nats]]);
    for (const [name, c] of Object.entries(opts.collectives ?? {})) if (c) this.collectives.set(name as TransportName, c);
    this.done = new Promise((r) => (this.finish = r));
  }

  get step(): number {
    return this.replica?.step ?? 0;
  }

  /** True once a training coordinator has welcomed us: the job runner stays out of the way then. */
  get training(): boolean {
    return this.session !== 0 && !this.closed;
  }

  /** The replica (for tests and for metrics). */
  get state(): Replica | undefined {
    return this.replica;
  }

  start(): void {
    const { nc, run } = this.opts;
    for (const subject of [subjects.ctl(run), subjects.worker(run, this.id), subjects.gather(run)]) {
      this.subs.push(nc.subscribe(subject, { callback: (err, msg) => !err && this.onMessage(msg.data) }));
    }
    this.join();
    this.timer = setInterval(() => this.heartbeat(false), this.opts.heartbeatMs);
    void this.watchConnection();
    this.opts.log(`worker ${this.id} joining run ${run}`);
  }

  /** Leaves without a word (tests: a clean stand-in for a dead process is SIGKILL). */
  async close(result: WorkerResult = { ok: false, reason: 'closed', step: this.step }): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    for (const s of this.subs) s.unsubscribe();
    for (const c of this.collectives.values()) c.close();
    // (no waiting for this.queue: close() is also called from inside it, on Stop)
    await this.replica?.close();
    this.finish(result);
  }

  private send<K extends BodyKind>(
    kind: K,
    body: Bodies[K],
    step: number,
    membershipEpoch = 0,
    subject = subjects.coord(this.opts.run),
  ): void {
    if (this.closed) return;
    const bytes = encode(
      this.sender.stamp({ run: this.opts.run, worker: this.id, step, membershipEpoch: membershipEpoch, session: this.session }),
      kind,
      body,
    );
    this.opts.nc.publish(subject, bytes);
  }

  private heartbeat(reconnected: boolean): void {
    this.send('heartbeat', { busy: !!this.active, reconnected }, this.step);
  }

  /** After a broker reconnect, tell the coordinator at once: messages of the step in flight may be lost. */
  private async watchConnection(): Promise<void> {
    for await (const s of this.opts.nc.status()) {
      if (this.closed) return;
      if (s.type === 'reconnect') this.heartbeat(true);
    }
  }

  private join(): void {
    const { device, threads, backend } = this.opts;
    this.nonce = randomInt(1, 2 ** 32 - 1);
    const dp = this.opts.dataPlane;
    this.send(
      'join',
      {
        host: hostname(),
        pid: process.pid,
        device,
        threads,
        backend,
        hasState: !!this.replica,
        nonce: this.nonce,
        transports: [...this.collectives.keys()],
        dataHost: dp?.host ?? '',
        storePort: dp?.storePort ?? 0,
        transportNote: dp?.note ?? '',
        build: buildFingerprint(),
      },
      this.step,
    );
  }

  private onMessage(data: Uint8Array): void {
    if (this.closed) return;
    let env: Envelope;
    try {
      env = decode(data);
      if (env.run !== this.opts.run) throw new WireError('other_run', `message for run ${env.run}`);
      if (env.worker === this.id) throw new WireError('unexpected', `${env.kind} that claims to come from this worker`);
      this.guard.check(env.worker, env.origin, env.seq);
    } catch (e) {
      // Our coordinator (we are not in a run yet) speaks another protocol: we can never join it.
      if (e instanceof VersionError && e.worker === '' && e.run === this.opts.run && !this.session) {
        this.opts.log(
          `worker ${this.id}: the coordinator of run ${this.opts.run} speaks protocol version ${e.version}, this worker ${PROTOCOL_VERSION}: start both from the same build`,
        );
        void this.close({ ok: false, reason: `protocol version ${e.version}, not ${PROTOCOL_VERSION}`, step: this.step });
        return;
      }
      return this.reject(e);
    }
    // Control messages are handled in arrival order, one at a time (some await I/O).
    if (env.kind === 'grad') return this.onGrad(env, data.byteLength);
    this.queue = this.queue.then(() => this.onControl(env)).catch((e) => this.reject(e));
  }

  private reject(e: unknown): void {
    if (e instanceof WireError) this.telemetry.reject(e.reason, e.message);
    else this.opts.log(`worker ${this.id}: ${(e as Error).stack ?? e}`);
  }

  private async onControl(env: Envelope): Promise<void> {
    const fromCoordinator = env.worker === '';
    if (!fromCoordinator && env.kind !== 'state') throw new WireError('unexpected', `${env.kind} from worker ${env.worker}`);
    // A refusal answers our Join (its nonce) before any session is ours.
    const refusal = env.kind === 'stop' && env.body.nonce !== 0 && env.body.nonce === this.nonce && fromCoordinator;
    if (env.kind !== 'hello' && env.kind !== 'welcome' && !refusal && env.session !== this.session)
      throw new WireError('wrong_session', `${env.kind} of session ${env.session}`);
    if (fromCoordinator && env.kind !== 'welcome' && env.kind !== 'hello' && env.membershipEpoch < this.membershipEpochFloor)
      throw new WireError('stale_epoch', `${env.kind} of membership epoch ${env.membershipEpoch} < ${this.membershipEpochFloor}`);
    // The coordinator has moved to a newer membership epoch (a failure, a join): the steps of
    // the plan in flight stop here; the next plan says where to go on from.
    if (fromCoordinator && this.active && env.kind !== 'hello' && env.membershipEpoch > this.active.env.membershipEpoch) {
      this.active = undefined;
      this.wake?.();
    }
    switch (env.kind) {
      case 'hello':
        return this.onHello(env);
      case 'welcome':
        return this.onWelcome(env);
      case 'state':
        return this.onState(env);
      case 'plan':
        this.membershipEpochFloor = env.membershipEpoch;
        return this.onPlan(env);
      case 'commit':
        return this.onCommit(env);
      case 'stateRequest':
        this.membershipEpochFloor = env.membershipEpoch;
        return this.onStateRequest(env);
      case 'stop':
        this.active = undefined;
        this.opts.log(`worker ${this.id}: run ${env.body.ok ? 'finished' : 'stopped'}: ${env.body.reason}`);
        return this.close({ ok: env.body.ok, reason: env.body.reason, step: this.step });
      default:
        throw new WireError('unexpected', `${env.kind} on a worker`);
    }
  }

  /** This replica cannot follow the coordinator (it missed steps, or holds no snapshot of a re-plan's step): ask for the state. */
  private resync(why: string): void {
    this.opts.log(`worker ${this.id}: ${why}; asking for the state`);
    const r = this.replica;
    this.replica = undefined;
    void r?.close();
    this.active = undefined;
    this.plan = undefined;
    this.snapshots.clear();
    this.join();
  }

  /** Steps before `step` are durable: no re-plan goes back before it, so older snapshots can go. */
  private onCommit(env: EnvelopeOf<'commit'>): void {
    if (this.plan?.membershipEpoch !== env.membershipEpoch) return;
    const s = env.body.step;
    if (!this.snapshots.has(s)) throw new WireError('unexpected', `commit of step ${s}, which is no snapshot point of this worker`);
    for (const [k, snap] of this.snapshots)
      if (k < s) {
        this.snapshots.delete(k);
        this.spareSnapshot = snap;
      }
    this.durable = Math.max(this.durable, s);
    this.wake?.();
  }

  /**
   * Our coordinator lost us (same session), or another coordinator is up (a restart):
   * join. A Hello of a foreign session may also be junk, so those are answered at most
   * every 2 s: at worst a slowdown, never a wrong state.
   */
  private onHello(env: EnvelopeOf<'hello'>): void {
    if (env.session !== this.session) {
      const now = Date.now();
      if (now - this.lastForeignHello < 2000) throw new WireError('wrong_session', `hello of session ${env.session} (rate-limited)`);
      this.lastForeignHello = now;
    } else {
      // Our coordinator dropped us (we were silent too long) and went back to its last commit:
      // a snapshot we hold of it is ours to go back to, so that we join holding the state it
      // has committed (and may be welcomed with `keep` instead of a transfer).
      const r = this.replica;
      const snap = this.snapshots.get(env.body.committed);
      this.active = undefined;
      this.plan = undefined;
      if (r && snap && r.step !== env.body.committed) {
        this.opts.log(`worker ${this.id}: back from step ${r.step} to the commit at step ${env.body.committed} (dropped)`);
        r.restore(snap);
      }
    }
    this.join();
  }

  private async onWelcome(env: EnvelopeOf<'welcome'>): Promise<void> {
    const w = env.body;
    if (w.nonce !== this.nonce) throw new WireError('unexpected', 'welcome that answers none of our joins');
    this.session = env.session;
    this.active = undefined;
    this.plan = undefined;
    this.snapshots.clear();
    this.membershipEpochFloor = env.membershipEpoch;
    this.configJson = w.configJson;
    if (w.keep) {
      // (a state we hold of this coordinator's session, at the step it has committed)
      const r = this.replica;
      if (!r || r.step !== w.committed)
        throw new WireError('unexpected', `welcome keeps a state at step ${w.committed}, this worker holds ${r?.step}`);
      this.send(
        'synced',
        {
          checksum: r.checksum(),
          stepsPerEpoch: r.stepsPerEpoch(),
          numParams: r.numParams,
          transfer: '',
          error: '',
          lastBatch: r.lastBatch(),
        },
        r.step,
      );
    } else if (w.init) {
      await this.replace(await this.opts.factory(w.configJson), '');
    } else {
      this.awaiting = { transfer: w.transfer, committed: w.committed };
    }
  }

  private async onState(env: EnvelopeOf<'state'>): Promise<void> {
    const got = this.inbox.add(env); // a bad chunk throws WireError('bad_state')
    if (!got || !this.awaiting || got.transfer !== this.awaiting.transfer) return;
    this.awaiting = undefined;
    try {
      await this.replace(await this.opts.factory(this.configJson, got.bytes), got.transfer);
    } catch (e) {
      this.send(
        'synced',
        { checksum: '', stepsPerEpoch: 0, numParams: 0, transfer: got.transfer, error: (e as Error).message, lastBatch: 0 },
        0,
      );
    }
  }

  private async replace(r: Replica, transfer: string): Promise<void> {
    await this.replica?.close();
    this.replica = r;
    this.snapshots.clear();
    this.send(
      'synced',
      { checksum: r.checksum(), stepsPerEpoch: r.stepsPerEpoch(), numParams: r.numParams, transfer, error: '', lastBatch: r.lastBatch() },
      r.step,
    );
  }

  /** Sends our state of step `step`: the current one, or the snapshot of that step (a checkpoint while we go on, or a re-plan's rollback point). */
  private onStateRequest(env: EnvelopeOf<'stateRequest'>): void {
    const q = env.body;
    const r = this.replica;
    if (q.donor !== this.id || !r) return;
    const snap = r.step === q.step ? undefined : this.snapshots.get(q.step);
    if (r.step !== q.step && !snap)
      throw new WireError('unexpected', `state of step ${q.step} requested; this worker is at step ${r.step} with no snapshot of it`);
    const bytes = r.exportState(snap);
    const checksum = r.checksum(snap);
    const header = { run: this.opts.run, worker: this.id, step: q.step, membershipEpoch: env.membershipEpoch, session: this.session };
    // The export above is the snapshot; sending it must not hold up the steps.
    for (const t of q.targets) {
      const subject = t === '' ? subjects.coord(this.opts.run) : subjects.worker(this.opts.run, t);
      void sendState(this.opts.nc, subject, header, this.sender, q.transfer, bytes, checksum).then(
        (n) => (this.telemetry.bytesSent += n),
        (e) => this.reject(e),
      );
    }
  }

  /**
   * A plan: steps [header step, until) with these members. A replica past its first step goes
   * back to its snapshot of it (the coordinator's last commit: every member holds one).
   */
  private onPlan(env: EnvelopeOf<'plan'>): void {
    const p = env.body;
    this.active = undefined;
    this.plan = undefined;
    const r = this.replica;
    if (!p.members.includes(this.id) || !r) return;
    const n = p.members.length;
    if (
      p.numParams !== r.numParams ||
      p.chunkFloats < 1 ||
      p.commitEvery < 1 ||
      p.until <= env.step ||
      p.batchSize < n ||
      (p.stepsPerEpoch > 0 && p.lastBatch < n)
    )
      throw new WireError('unexpected', `plan for ${p.numParams} params / ${n} members / steps [${env.step}, ${p.until}) does not fit`);
    const collective = this.collectives.get((p.transport || 'nats') as TransportName);
    if (!collective) throw new WireError('unexpected', `plan asks for transport '${p.transport}', which this worker does not offer`);
    if (r.step !== env.step) {
      const snap = this.snapshots.get(env.step);
      if (!snap) return this.resync(`plan from step ${env.step} but state at ${r.step} with no snapshot of it`);
      this.opts.log(`worker ${this.id}: back from step ${r.step} to step ${env.step} (re-planned)`);
      r.restore(snap);
    }
    for (const k of this.snapshots.keys()) if (k > env.step) this.snapshots.delete(k); // of an abandoned plan
    if (!this.snapshots.has(env.step)) this.snapshots.set(env.step, r.snapshot());
    const a: Active = { env, collective };
    this.active = a;
    this.plan = env;
    this.durable = env.step;
    void this.runSteps(a, r).catch((e) => this.reject(e));
  }

  /**
   * The plan's steps, back to back: our shard's gradient sum, the all-reduce, the mean
   * (core/train/step.ts, as `scoreflow train` takes it), the update, a snapshot at snapshot
   * points, then the ack (asynchronous: nothing waits for an answer). A reduce that fails (a
   * peer died mid-collective) is only logged: the coordinator re-plans from its last commit.
   */
  private async runSteps(a: Active, r: Replica): Promise<void> {
    const { env, collective } = a;
    const p = env.body;
    const n = p.members.length;
    const rank = p.members.indexOf(this.id);
    // Control-plane wait: before the plan's first step, since this worker was last busy; before
    // a later one, only while it waits for a Commit (it never does when the coordinator keeps up).
    let waitMs = performance.now() - this.idleSince;
    let end = performance.now();
    // Control messages and heartbeats need turns of the event loop: a step that waited for
    // its all-reduce gave them one; one that did not (a lone member, a synchronous
    // transport) yields before the next.
    let turned = true;
    const turn = () => (turned = true);
    for (let k = env.step; k < p.until; k++) {
      if (!turned) await yieldToLoop();
      // At most AHEAD commit intervals past the last Commit: a coordinator that is gone (or a
      // broker that is) stops the steps there, and snapshots never pile up.
      const w0 = performance.now();
      while (this.active === a && k >= this.durable + AHEAD * p.commitEvery) await new Promise<void>((resolve) => (this.wake = resolve));
      if (k > env.step) waitMs = performance.now() - w0;
      if (this.active !== a) return;
      turned = false;
      setImmediate(turn);
      const t0 = performance.now();
      const batch = p.stepsPerEpoch > 0 && k % p.stepsPerEpoch === p.stepsPerEpoch - 1 ? p.lastBatch : p.batchSize;
      const shardStart = rangeBounds(batch, n);
      collective.begin({
        run: this.opts.run,
        me: this.id,
        step: k,
        membershipEpoch: env.membershipEpoch,
        members: p.members,
        numParams: p.numParams,
        chunkFloats: p.chunkFloats,
        globalBatch: batch,
        session: this.session,
        shardStart,
        store: p.store,
        paramStarts: r.paramStarts,
        bucketFloats: p.bucketFloats,
      });
      const sink = collective.sink?.();
      const g = await r.gradSum(k, shardStart[rank], shardStart[rank + 1], sink);
      if (this.active !== a) return;
      const t1 = performance.now();
      const ack = {
        lossSum: g.lossSum,
        count: g.count,
        checksum: '',
        error: '',
        computeMs: t1 - t0,
        allreduceMs: 0,
        waitMs,
        bytesSent: 0,
        bytesReceived: 0,
        stepMs: 0,
      };
      // A bad local gradient is this worker's own failure: say so before it reaches any peer
      // (a sink's transport checks each part before it sends it: reduce() throws NonFiniteError).
      if (!Number.isFinite(g.lossSum) || (!sink && !allFinite(g.grad))) {
        ack.error = `non-finite gradient or loss at step ${k} on worker ${this.id}`;
        this.active = undefined;
        return this.send('ack', ack, k, env.membershipEpoch);
      }
      const nonFinite = (e: NonFiniteError) => {
        this.active = undefined;
        ack.error = `non-finite gradient at step ${k} on worker ${this.id} (${collective.transport}): ${e.message}`;
        return this.send('ack', ack, k, env.membershipEpoch);
      };
      let sum: Float32Array;
      try {
        const reduced = collective.reduce(g);
        // The checksum is of the state before this step's update: hash it while the peers' contributions are on their way.
        if (p.checksumEvery > 0 && k % p.checksumEvery === 0) ack.checksum = r.checksum();
        sum = await reduced;
        if (this.active !== a) return;
      } catch (e) {
        if (this.active !== a) return;
        if (e instanceof NonFiniteError) return nonFinite(e);
        this.active = undefined;
        return this.opts.log(`worker ${this.id}: step ${k} all-reduce (${collective.transport}) failed: ${(e as Error).message}`);
      }
      const t2 = performance.now();
      // the mean is taken inside the update; a sum that overflowed is refused there, nothing applied
      try {
        r.apply(sum, batch);
      } catch (e) {
        if (e instanceof NonFiniteError) return nonFinite(e);
        throw e;
      }
      const next = k + 1;
      if (next % p.commitEvery === 0 || next === p.until) {
        this.snapshots.set(next, r.snapshot(this.spareSnapshot));
        this.spareSnapshot = undefined;
      }
      end = performance.now();
      Object.assign(ack, {
        allreduceMs: t2 - t1,
        stepMs: end - t0,
        bytesSent: collective.bytesSent,
        bytesReceived: collective.bytesReceived,
      });
      this.telemetry.bytesSent += collective.bytesSent;
      this.telemetry.bytesReceived += collective.bytesReceived;
      this.telemetry.emit('workerStep', {
        run: this.opts.run,
        worker: this.id,
        step: k,
        images: g.count,
        lossMean: g.lossSum / g.count,
        ...ack,
      });
      this.send('ack', ack, k, env.membershipEpoch);
    }
    if (this.active === a) this.active = undefined;
    this.idleSince = end;
  }

  /** Gradient chunks (transport nats); they can overtake the plan they belong to. */
  private onGrad(env: EnvelopeOf<'grad'>, size: number): void {
    if (env.session !== this.session || !this.session)
      return this.reject(new WireError('wrong_session', `grad chunk of session ${env.session}`));
    this.nats.accept(env, size, { membershipEpoch: this.membershipEpochFloor, step: this.step });
  }
}
