/**
 * A cluster worker: joins a run, heartbeats, and for every StepPlan it is a member of
 * computes the gradient sum of its shard, takes part in the all-reduce, holds the reduced
 * gradient and acks. It applies a held gradient only when the coordinator says the step is
 * committed (any later control message carries `committed`): two-phase commit, so a step
 * is applied by all live workers or by none, whoever dies when.
 */
import { randomInt } from 'node:crypto';
import { hostname } from 'node:os';
import type { NatsConnection, Subscription } from 'nats';
import { buildFingerprint } from '../cluster/fingerprint.js';
import { Telemetry } from '../telemetry/hub.js';
import { allFinite, meanGradient, NonFiniteError } from '../core/train/step.js';
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
import type { Collective, StepContext, TransportName } from './collective/index.js';
import { NatsCollective } from './collective/nats.js';
import type { Replica, ReplicaFactory } from './replica.js';

export interface WorkerOptions {
  nc: NatsConnection;
  run: string;
  /** Default: host-device-pid. */
  id?: string;
  device?: number;
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
  private held?: { step: number; membershipEpoch: number; mean: Float32Array };
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
    switch (env.kind) {
      case 'hello':
        return this.onHello(env);
      case 'welcome':
        return this.onWelcome(env);
      case 'state':
        return this.onState(env);
      case 'plan':
        this.membershipEpochFloor = env.membershipEpoch;
        if (!this.commit(env.body.committed, env.body.commitMembershipEpoch)) return;
        return this.onPlan(env);
      case 'stateRequest':
        if (!this.commit(env.body.committed, env.body.commitMembershipEpoch)) return;
        return this.onStateRequest(env);
      case 'stop':
        this.commit(env.body.committed, env.body.commitMembershipEpoch);
        this.opts.log(`worker ${this.id}: run ${env.body.ok ? 'finished' : 'stopped'}: ${env.body.reason}`);
        return this.close({ ok: env.body.ok, reason: env.body.reason, step: this.step });
      default:
        throw new WireError('unexpected', `${env.kind} on a worker`);
    }
  }

  /**
   * Brings the replica to `committed` steps: applies the held gradient of step
   * committed-1 if it was computed under `commitMembershipEpoch`. Returns false (and asks to join
   * again) when that is impossible: this replica missed a step and needs the state.
   */
  private commit(committed: number, commitMembershipEpoch: number): boolean {
    const r = this.replica;
    if (!r) return false;
    const h = this.held;
    if (h && h.step === committed - 1 && r.step === h.step && h.membershipEpoch === commitMembershipEpoch) {
      r.apply(h.mean);
      this.held = undefined;
    }
    if (h && h.step < committed - 1) this.held = undefined;
    if (r.step === committed) return true;
    // Within a session the committed count never falls (a rollback re-welcomes everyone), so
    // a message saying otherwise is stale: it must not cost us our state.
    if (r.step > committed) {
      this.reject(new WireError('stale_epoch', `message says ${committed} steps are committed, this replica holds ${r.step}`));
      return false;
    }
    this.opts.log(`worker ${this.id}: state at step ${r.step} but ${committed} are committed; asking for the state`);
    this.replica = undefined;
    void r.close();
    this.active = undefined;
    this.join();
    return false;
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
      // Our coordinator dropped us (we were silent too long): a step it committed meanwhile that
      // we hold is ours to apply, so that we join holding the state it has committed.
      const r = this.replica;
      const h = this.held;
      if (r && h && h.step === env.body.committed - 1 && r.step === h.step && h.membershipEpoch === env.body.commitMembershipEpoch) {
        r.apply(h.mean);
        this.held = undefined;
      }
    }
    this.join();
  }

  private async onWelcome(env: EnvelopeOf<'welcome'>): Promise<void> {
    const w = env.body;
    if (w.nonce !== this.nonce) throw new WireError('unexpected', 'welcome that answers none of our joins');
    this.session = env.session;
    this.membershipEpochFloor = 0;
    this.active = undefined;
    this.held = undefined;
    this.membershipEpochFloor = Math.max(this.membershipEpochFloor, env.membershipEpoch);
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
    this.send(
      'synced',
      { checksum: r.checksum(), stepsPerEpoch: r.stepsPerEpoch(), numParams: r.numParams, transfer, error: '', lastBatch: r.lastBatch() },
      r.step,
    );
  }

  private onStateRequest(env: EnvelopeOf<'stateRequest'>): void {
    const q = env.body;
    if (q.donor !== this.id || !this.replica) return;
    const bytes = this.replica.exportState();
    const checksum = this.replica.checksum();
    const header = {
      run: this.opts.run,
      worker: this.id,
      step: this.replica.step,
      membershipEpoch: env.membershipEpoch,
      session: this.session,
    };
    // The export above is the snapshot; sending it must not hold up the next plan.
    for (const t of q.targets) {
      const subject = t === '' ? subjects.coord(this.opts.run) : subjects.worker(this.opts.run, t);
      void sendState(this.opts.nc, subject, header, this.sender, q.transfer, bytes, checksum).then(
        (n) => (this.telemetry.bytesSent += n),
        (e) => this.reject(e),
      );
    }
  }

  private onPlan(env: EnvelopeOf<'plan'>): void {
    const p = env.body;
    this.active = undefined;
    if (this.held?.step === env.step) this.held = undefined; // a re-plan replaces an unapplied result
    if (!p.members.includes(this.id)) return;
    const r = this.replica!;
    if (r.step !== env.step) {
      this.opts.log(`worker ${this.id}: plan for step ${env.step} but state at ${r.step}; asking for the state`);
      return this.join();
    }
    const waitMs = performance.now() - this.idleSince;
    if (
      p.numParams !== r.numParams ||
      p.shardStart.length !== p.members.length + 1 ||
      p.chunkFloats < 1 ||
      p.shardStart[p.members.length] !== p.globalBatch
    )
      throw new WireError('unexpected', `plan for ${p.numParams} params / ${p.members.length} members does not fit this replica`);
    const collective = this.collectives.get((p.transport || 'nats') as TransportName);
    if (!collective) throw new WireError('unexpected', `plan asks for transport '${p.transport}', which this worker does not offer`);
    const ctx: StepContext = {
      run: this.opts.run,
      me: this.id,
      step: env.step,
      membershipEpoch: env.membershipEpoch,
      members: p.members,
      numParams: p.numParams,
      chunkFloats: p.chunkFloats,
      globalBatch: p.globalBatch,
      session: this.session,
      shardStart: p.shardStart,
      store: p.store,
    };
    collective.begin(ctx);
    const a: Active = { env, collective };
    this.active = a;
    void this.runStep(a, r, waitMs).catch((e) => this.reject(e));
  }

  /**
   * Our shard's gradient sum, the all-reduce, the mean (core/train/step.ts, as `scoreflow
   * train` takes it), held until the coordinator commits the step. A reduce that fails (a
   * peer died mid-collective) is only logged: the coordinator re-plans the step.
   */
  private async runStep(a: Active, r: Replica, waitMs: number): Promise<void> {
    const { env, collective } = a;
    const rank = env.body.members.indexOf(this.id);
    const [from, to] = [env.body.shardStart[rank], env.body.shardStart[rank + 1]];
    const t0 = performance.now();
    const g = await r.gradSum(env.step, from, to);
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
    };
    // A bad local gradient is this worker's own failure: say so before it reaches any peer.
    if (!Number.isFinite(g.lossSum) || !allFinite(g.grad)) {
      ack.error = `non-finite gradient or loss at step ${env.step} on worker ${this.id}`;
      return this.send('ack', ack, env.step, env.membershipEpoch);
    }
    let mean: Float32Array;
    try {
      const reduced = collective.reduce(g);
      // The checksum is of the state before this step's update, which nothing changes until the
      // commit: hash it while the peers' contributions are on their way, not before computing.
      if (env.body.checksum) ack.checksum = r.checksum();
      const sum = await reduced;
      if (this.active !== a) return;
      mean = meanGradient(sum, env.body.globalBatch);
    } catch (e) {
      if (this.active !== a) return;
      if (!(e instanceof NonFiniteError))
        return this.opts.log(`worker ${this.id}: step ${env.step} all-reduce (${collective.transport}) failed: ${(e as Error).message}`);
      ack.error = `non-finite reduced gradient at step ${env.step} (${collective.transport}): ${e.message}`;
      return this.send('ack', ack, env.step, env.membershipEpoch);
    }
    this.active = undefined;
    this.held = { step: env.step, membershipEpoch: env.membershipEpoch, mean };
    this.idleSince = performance.now();
    Object.assign(ack, { allreduceMs: this.idleSince - t1, bytesSent: collective.bytesSent, bytesReceived: collective.bytesReceived });
    this.telemetry.bytesSent += collective.bytesSent;
    this.telemetry.bytesReceived += collective.bytesReceived;
    this.telemetry.emit('workerStep', {
      run: this.opts.run,
      worker: this.id,
      step: env.step,
      images: g.count,
      lossMean: g.lossSum / g.count,
      ...ack,
    });
    this.send('ack', ack, env.step, env.membershipEpoch);
  }

  /** Gradient chunks (transport nats); they can overtake the plan they belong to. */
  private onGrad(env: EnvelopeOf<'grad'>, size: number): void {
    if (env.session !== this.session || !this.session)
      return this.reject(new WireError('wrong_session', `grad chunk of session ${env.session}`));
    this.nats.accept(env, size, { membershipEpoch: this.membershipEpochFloor, step: this.step });
  }
}
