/**
 * The coordinator of a training run: membership, step plans, commits, checksums,
 * checkpoints and fault handling. It holds no model and is off the step's critical path:
 * workers compute, all-reduce and apply step after step; the coordinator decides.
 *
 *   plan  StepPlan(from `committed` to the end of the run) for one membership epoch. Acks
 *         flow in asynchronously; a step acked by every member is checked (checksums) and
 *         queued for the log; at every snapshot point (a multiple of the commit interval)
 *         acked by all, the queued steps are committed: logged to train.jsonl, and a
 *         Commit tells the workers they may drop older snapshots. A member lost, a join, a
 *         broker reconnect or no progress: the plan is aborted (the membership epoch
 *         grows, which stops every worker's steps) and the run re-planned from the last
 *         commit, which every member holds a snapshot of: they restore it and re-run
 *         what was lost, exactly (data and noise are functions of seed and step).
 *   sync  new members get the state of step `committed` (Welcome + a state transfer from a
 *         live worker's snapshot or from the coordinator's checkpoint, or init from the seed
 *         on a fresh run) before they take part in a plan.
 *   ckpt  at a commit, a member exports its snapshot of that step to the coordinator, which
 *         writes it atomically while the steps go on.
 */
import { randomInt } from 'node:crypto';
import type { NatsConnection, Subscription } from 'nats';
import { RunDir, checkpointStep, type RunRecord } from './run-dir.js';
import { sendState, StateInbox } from '../protocol/state-transfer.js';
import { buildFingerprint, buildMismatch } from '../cluster/fingerprint.js';
import { Telemetry, type StepReport } from '../telemetry/hub.js';
import { chunkFloatsFor, rangeBounds } from '../protocol/chunking.js';
import {
  decode,
  encode,
  PROTOCOL_VERSION,
  VersionError,
  WireError,
  type Ack,
  type Bodies,
  type BodyKind,
  type Envelope,
  type EnvelopeOf,
  type Join,
} from '../protocol/envelope.js';
import { CHECKPOINT_EVERY } from '../core/train/checkpoint.js';
import { ReplayGuard, Sender } from '../protocol/sequence.js';
import { checkId, subjects } from '../protocol/subjects.js';
import { BUCKET_FLOATS, type TransportChoice, type TransportName } from '../protocol/transports.js';

export interface CoordinatorOptions {
  nc: NatsConnection;
  run: string;
  outDir: string;
  /** Training configuration of a fresh run (JSON, handed to every worker as is). */
  configJson: string;
  /** Global batch size (the plan splits [0, batchSize) over the members). */
  batchSize: number;
  /** Train until this many steps are committed; or `epochs` whole epochs. */
  steps?: number;
  epochs?: number;
  /** A training checkpoint to start from (otherwise: the run directory's, or fresh). */
  resumeFrom?: Uint8Array;
  /** Members needed before the first step. */
  minWorkers?: number;
  heartbeatTimeoutMs?: number;
  checksumEvery?: number;
  /** Checkpoint every this many steps (0: only at the end). */
  checkpointEvery?: number;
  /** Commit (log, and let workers drop older snapshots) every this many steps; a failure re-runs at most this many. */
  commitEvery?: number;
  /** No step acked by every member for longer than max(this, 10 × the last step): the plan is aborted and re-planned. */
  stepTimeoutMs?: number;
  syncTimeoutMs?: number;
  /** How gradients move: `auto` (nccl when every member is a CUDA worker with it, gloo when every member has it, else nats) or one of them. */
  transport?: TransportChoice;
  /** gloo/nccl: the all-reduce of the gradient in buckets of at least this many floats during the backward pass (0: once after it). */
  bucketFloats?: number;
  log?: (line: string) => void;
  telemetry?: Telemetry;
}

export interface RunResult {
  ok: boolean;
  reason: string;
  step: number;
}

/** The one source of the coordinator's defaults (`coordinator start`'s help text reads them from here). */
export const COORDINATOR_DEFAULTS = {
  transport: 'auto' as TransportChoice,
  bucketFloats: BUCKET_FLOATS,
  minWorkers: 1,
  heartbeatTimeoutMs: 3000,
  checksumEvery: 10,
  checkpointEvery: CHECKPOINT_EVERY,
  commitEvery: 10,
  stepTimeoutMs: 30_000,
  syncTimeoutMs: 60_000,
  /** Restarts of one spawned worker process before the coordinator gives up on it. */
  maxRestarts: 3,
  /** First restart delay of a spawned worker; doubled on each further restart of the same worker (at most 30 s). */
  restartBackoffMs: 1000,
  /** The run directory's owner lease: renewed every third of it; another host may take over a lease this old. */
  ownerLeaseMs: 30_000,
};

/**
 * A gap this long between two of the coordinator's own 100 ms ticks (measured on the monotonic
 * clock) means the coordinator itself was not running (SIGSTOP, a frozen VM, swap): it saw
 * nothing during it, so the gap does not count against any worker's heartbeat deadline.
 */
const PAUSE_GAP_MS = 1000;

interface Member {
  id: string;
  seq: number;
  lastSeen: number;
  join: Join;
  phase: 'new' | 'syncing' | 'ready';
  readyStep: number;
  transfer: string;
  /** The step a worker of this session (dropped, e.g. while it was paused) joined holding; -1: none or another session's. */
  holds: number;
}

interface Plan {
  start: number;
  until: number;
  membershipEpoch: number;
  view: string[];
  transport: string;
  /** Steps [start, acked) are acked by every member; acks of later steps by step. */
  acked: number;
  acks: Map<number, Map<string, Ack>>;
  /** Rows of acked steps not yet committed (logged at the next commit). */
  rows: StepRow[];
  started: number;
  progressAt: number;
  /** A member's own failure (a non-finite gradient) at a step: the run stops there. */
  error?: { step: number; reason: string; at: number };
}

interface StepRow {
  report: StepReport;
  log: { step: number } & Record<string, unknown>;
}

export class Coordinator {
  readonly telemetry: Telemetry;
  private readonly opts: typeof COORDINATOR_DEFAULTS & CoordinatorOptions & { log: (l: string) => void };
  private readonly dir: RunDir;
  private record!: RunRecord;
  private readonly members = new Map<string, Member>();
  private seq = 0;
  private committed = 0;
  private membershipEpoch = 0;
  private lastTransport = '';
  private plan?: Plan;
  private sync?: { transfer: string; targets: Set<string>; deadline: number; expect?: string; donor?: string };
  private ckpt?: { transfer: string; donor: string; step: number; deadline: number; started: number };
  private state?: { bytes: Uint8Array; step: number; checksum: string };
  private lastCkptStep = 0;
  private stepsPerEpoch = 0;
  private lastBatch = 0;
  private numParams = 0;
  private lastStepMs = 0;
  private lastAckedAt = 0;
  private started = false;
  private transfers = 0;
  /** Set by a roll-back: a state a worker kept from before it is no longer necessarily ours. */
  private rolledBack = false;
  private readonly helloAt = new Map<string, number>();
  private readonly refused = new Set<string>();
  private readonly build = buildFingerprint();
  /** Workers kept out because the batch has no sample left for them (logged once each). */
  private readonly idle = new Set<string>();
  private readonly inbox = new StateInbox();
  private subs: Subscription[] = [];
  private timer?: NodeJS.Timeout;
  /** When liveness was last judged (performance.now()), and whether the broker connection is down. */
  private lastLook = performance.now();
  private disconnected = false;
  private finished = false;
  private readonly session = randomInt(1, 2 ** 32 - 1);
  private readonly sender = Sender.now();
  private readonly guard = new ReplayGuard();
  private resolve!: (r: RunResult) => void;
  readonly done: Promise<RunResult>;

  constructor(opts: CoordinatorOptions) {
    // (an option given as undefined takes its default)
    const given = Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined));
    this.opts = { ...COORDINATOR_DEFAULTS, log: () => {}, ...(given as unknown as CoordinatorOptions) };
    checkId('run', opts.run);
    this.dir = new RunDir(opts.outDir);
    this.telemetry = opts.telemetry ?? new Telemetry(this.opts.log);
    this.done = new Promise((r) => (this.resolve = r));
  }

  get step(): number {
    return this.committed;
  }

  get liveWorkers(): string[] {
    return [...this.members.keys()];
  }

  /** Loads or creates the run record, subscribes, says Hello (workers of a previous coordinator re-attach). */
  async start(): Promise<void> {
    await this.restore();
    const { nc, run } = this.opts;
    this.subs.push(nc.subscribe(subjects.coord(run), { callback: (err, m) => !err && this.onMessage(m.data) }));
    void this.watchConnection();
    this.timer = setInterval(() => this.tick(), 100);
    this.broadcast('hello', { committed: this.committed });
    this.telemetry.ready = true;
    this.opts.log(`coordinator: run ${run} at step ${this.committed}, waiting for ${this.opts.minWorkers} worker(s) on ${nc.getServer()}`);
    const every = this.commitEvery();
    if (every !== this.opts.commitEvery)
      this.opts.log(
        `coordinator: committing every ${every} step(s), not ${this.opts.commitEvery}: checkpoints (every ${this.opts.checkpointEvery}) fall on commits`,
      );
  }

  /** Ends the run as failed (one STOPPING line), e.g. when the workers it needs are gone for good. */
  stop(reason: string): void {
    if (!this.finished) this.fatal(reason);
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    for (const s of this.subs) s.unsubscribe();
    if (!this.finished) this.finish({ ok: false, reason: 'coordinator closed', step: this.committed }, false);
  }

  // ---------------------------------------------------------------- persistence

  private async restore(): Promise<void> {
    const prev = this.dir.read();
    if (prev && prev.run !== this.opts.run)
      throw new Error(`${this.opts.outDir} holds run ${prev.run}, not ${this.opts.run}: pass --run ${prev.run} or another --out`);
    this.record = prev
      ? { ...prev, incarnation: prev.incarnation + 1 }
      : { run: this.opts.run, incarnation: 1, configJson: this.opts.configJson };
    // The run's config is the recorded one (workers train with it): plan with its batch size too.
    const recorded = (JSON.parse(this.record.configJson) as { batchSize?: unknown }).batchSize;
    if (typeof recorded === 'number' && Number.isInteger(recorded) && recorded >= 1) this.opts.batchSize = recorded;
    if (this.opts.steps === undefined && this.opts.epochs === undefined && prev?.totalSteps) this.opts.steps = prev.totalSteps;
    this.membershipEpoch = (this.record.incarnation & 0xffff) * 0x10000;
    if (prev?.checkpoint) {
      const bytes = this.dir.readCheckpoint(prev.checkpoint);
      this.state = { bytes, step: prev.checkpoint.step, checksum: prev.checkpoint.checksum };
      this.opts.log(`coordinator: resuming run ${this.opts.run} from its checkpoint at step ${prev.checkpoint.step}`);
    } else if (this.opts.resumeFrom) {
      const step = checkpointStep(this.opts.resumeFrom);
      if (step === undefined) throw new Error('the --resume file is not a training checkpoint (no step in its metadata)');
      this.state = { bytes: this.opts.resumeFrom, step, checksum: '' };
    }
    this.committed = this.lastCkptStep = this.state?.step ?? 0;
    await this.dir.write(this.record);
  }

  private totalSteps(): number | undefined {
    if (this.opts.steps !== undefined) return this.opts.steps;
    if (this.opts.epochs !== undefined && this.stepsPerEpoch) return this.opts.epochs * this.stepsPerEpoch;
    return undefined;
  }

  // ---------------------------------------------------------------- messages

  private send<K extends BodyKind>(subject: string, kind: K, body: Bodies[K], step = this.committed): void {
    this.opts.nc.publish(
      subject,
      encode(
        this.sender.stamp({ run: this.opts.run, worker: '', step, membershipEpoch: this.membershipEpoch, session: this.session }),
        kind,
        body,
      ),
    );
  }

  private broadcast<K extends BodyKind>(kind: K, body: Bodies[K], step = this.committed): void {
    this.send(subjects.ctl(this.opts.run), kind, body, step);
  }

  private onMessage(data: Uint8Array): void {
    if (this.finished) return;
    try {
      const env = decode(data);
      if (env.run !== this.opts.run) throw new WireError('other_run', `message for run ${env.run}`);
      if (env.worker === '') throw new WireError('unexpected', `${env.kind} that claims to come from a coordinator`);
      this.guard.check(env.worker, env.origin, env.seq);
      this.handle(env);
    } catch (e) {
      if (e instanceof VersionError) this.refuseVersion(e);
      if (e instanceof WireError) this.telemetry.reject(e.reason, e.message);
      else {
        // A bug met by some input: say so loudly, but a message must not end the run.
        this.opts.log(`coordinator: internal error on a message: ${(e as Error).stack ?? e}`);
        this.telemetry.reject('unexpected', (e as Error).message);
      }
      return;
    }
    this.tick();
  }

  private handle(env: Envelope): void {
    if (env.kind === 'join') return this.onJoin(env);
    const m = this.members.get(env.worker);
    // A heartbeat we cannot place (a worker of our previous life, or one we dropped): ask it to join.
    if ((!m || env.session !== this.session) && env.kind === 'heartbeat') return this.hello(env.worker);
    if (!m) throw new WireError('unknown_worker', `${env.kind} from ${JSON.stringify(env.worker)}`);
    if (env.session !== this.session) throw new WireError('wrong_session', `${env.kind} from ${m.id} of session ${env.session}`);
    m.lastSeen = performance.now();
    switch (env.kind) {
      case 'heartbeat':
        if (env.body.reconnected) this.redo(`worker ${m.id} reconnected to NATS`);
        return;
      case 'synced':
        return this.onSynced(m, env);
      case 'ack':
        return this.onAck(m, env);
      case 'state':
        if (!this.ckpt || env.worker !== this.ckpt.donor)
          throw new WireError('unexpected', `state chunk from ${m.id}, not a checkpoint donor`);
        return void this.onState(env).catch((e) => {
          if (e instanceof WireError) this.telemetry.reject(e.reason, e.message);
          else this.fatal(`checkpoint failed: ${(e as Error).message}`);
        });
      default:
        throw new WireError('unexpected', `${env.kind} sent to the coordinator`);
    }
  }

  /** Tells a worker we do not know (e.g. after our restart) to join; at most once a second. */
  private hello(worker: string): void {
    try {
      checkId('worker', worker);
    } catch (e) {
      throw new WireError('unknown_worker', (e as Error).message);
    }
    const now = Date.now();
    if (now - (this.helloAt.get(worker) ?? 0) < 1000) return;
    this.helloAt.set(worker, now);
    this.send(subjects.worker(this.opts.run, worker), 'hello', { committed: this.committed });
  }

  private onJoin(env: EnvelopeOf<'join'>): void {
    try {
      checkId('worker', env.worker);
    } catch (e) {
      throw new WireError('unexpected', (e as Error).message);
    }
    const other = buildMismatch(this.build, env.body.build);
    if (other) return this.refuse(env.worker, env.body.nonce, `built from other code: ${other}`);
    const want = this.opts.transport;
    if (want !== 'auto' && want !== 'nats' && !env.body.transports.includes(want)) {
      const why = env.body.transportNote ? ` (${env.body.transportNote})` : '';
      return this.refuse(
        env.worker,
        env.body.nonce,
        `the run uses --transport ${want}, the worker offers ${env.body.transports.join(', ') || 'nats'}${why}`,
      );
    }
    const old = this.members.get(env.worker);
    // Every member of a plan takes a non-empty shard of every global batch, so a run has at
    // most min(batch size, an epoch's last batch) members; a worker beyond that stays out
    // (idle) and, since its heartbeats get a Hello, joins as soon as a member leaves.
    if (!old && this.members.size >= this.capacity()) {
      if (!this.idle.has(env.worker))
        this.opts.log(
          `coordinator: worker ${env.worker} left idle: the global batch of ${this.capacity()} is split over ${this.members.size} worker(s) already; it joins when one leaves`,
        );
      this.idle.add(env.worker);
      return;
    }
    this.idle.delete(env.worker);
    if (old) this.drop(old.id, 'rejoined', false);
    this.members.set(env.worker, {
      id: env.worker,
      seq: this.seq++,
      lastSeen: performance.now(),
      join: env.body,
      phase: 'new',
      readyStep: -1,
      transfer: '',
      holds: env.session === this.session && env.body.hasState ? env.step : -1,
    });
    // `session` is in every message we send; a Welcome also echoes the Join's nonce.
    this.opts.log(
      `coordinator: worker ${env.worker} joined (${env.body.host} pid ${env.body.pid}, device ${env.body.device}, ${env.body.threads} thread(s), ${env.body.backend})`,
    );
    this.membersChanged();
  }

  /** A Stop answering a Join (its nonce): the worker says the reason and exits; said here once per worker and reason. */
  private refuse(worker: string, nonce: number, reason: string): void {
    const key = `${worker}\0${reason}`;
    if (!this.refused.has(key)) this.opts.log(`coordinator: worker ${worker} refused: ${reason}`);
    this.refused.add(key);
    this.send(subjects.worker(this.opts.run, worker), 'stop', {
      reason: `refused: ${reason}`,
      ok: false,
      nonce,
    });
  }

  /**
   * A Join or heartbeat in another protocol version: it cannot be answered in its own
   * language, but a message in ours on its subject tells that worker to exit (once a second).
   */
  private refuseVersion(e: VersionError): void {
    if (e.run !== this.opts.run || (e.kind !== 'join' && e.kind !== 'heartbeat')) return;
    try {
      checkId('worker', e.worker);
    } catch {
      return;
    }
    const now = Date.now();
    if (now - (this.helloAt.get(e.worker) ?? 0) < 1000) return;
    this.helloAt.set(e.worker, now);
    this.refuse(e.worker, 0, `it speaks protocol version ${e.version}, this coordinator ${PROTOCOL_VERSION}`);
  }

  private onSynced(m: Member, env: EnvelopeOf<'synced'>): void {
    const s = env.body;
    if (m.phase !== 'syncing' || s.transfer !== m.transfer)
      throw new WireError('unexpected', `synced from ${m.id} for transfer ${s.transfer}`);
    if (s.error) return this.drop(m.id, `could not load the state: ${s.error}`);
    if (this.numParams && s.numParams !== this.numParams)
      return this.drop(m.id, `has ${s.numParams} parameters, the run ${this.numParams}`);
    this.numParams = s.numParams;
    this.stepsPerEpoch ||= s.stepsPerEpoch;
    this.lastBatch ||= s.lastBatch;
    if (this.sync?.expect === undefined && this.sync) this.sync.expect = s.checksum;
    if (this.sync?.expect && s.checksum !== this.sync.expect)
      return this.fatal(`worker ${m.id} loaded a state with checksum ${s.checksum}, expected ${this.sync.expect}`);
    this.sync?.targets.delete(m.id);
    m.phase = env.step === this.committed ? 'ready' : 'new';
    m.readyStep = env.step;
  }

  private onAck(m: Member, env: EnvelopeOf<'ack'>): void {
    const p = this.plan;
    if (!p || env.membershipEpoch !== p.membershipEpoch || env.step < p.acked || env.step >= p.until || !p.view.includes(m.id))
      throw new WireError('stale_epoch', `ack of step ${env.step} epoch ${env.membershipEpoch} from ${m.id}`);
    if (env.body.error) {
      // Stop once the steps before it are in (their acks are on their way): they are durable.
      p.error ??= { step: env.step, reason: env.body.error, at: Date.now() };
      return this.advance(p);
    }
    if (!Number.isFinite(env.body.lossSum)) throw new WireError('non_finite', `ack with loss sum ${env.body.lossSum}`);
    const rank = p.view.indexOf(m.id);
    const shard = rangeBounds(this.batchOf(env.step), p.view.length);
    if (env.body.count !== shard[rank + 1] - shard[rank])
      throw new WireError('bad_chunk', `ack for ${env.body.count} samples from ${m.id}, its shard has ${shard[rank + 1] - shard[rank]}`);
    const acks = p.acks.get(env.step) ?? p.acks.set(env.step, new Map()).get(env.step)!;
    if (acks.has(m.id)) throw new WireError('duplicate', `second ack of step ${env.step} from ${m.id}`);
    acks.set(m.id, env.body);
    this.advance(p);
  }

  private async onState(env: EnvelopeOf<'state'>): Promise<void> {
    const got = this.inbox.add(env); // a bad chunk throws WireError('bad_state')
    if (!got) return;
    const c = this.ckpt;
    if (!c || got.transfer !== c.transfer || got.step !== c.step)
      throw new WireError('unexpected', `state transfer ${got.transfer} at step ${got.step}`);
    const rec = await this.dir.writeCheckpoint(got.bytes, got.step, got.checksum);
    this.record = { ...this.record, checkpoint: rec, totalSteps: this.totalSteps() };
    await this.dir.write(this.record);
    this.state = { bytes: got.bytes, step: got.step, checksum: got.checksum };
    this.lastCkptStep = got.step;
    this.ckpt = undefined;
    this.telemetry.lastCheckpointAt = Date.now();
    this.telemetry.emit('checkpoint', { step: got.step, path: rec.file, ms: Date.now() - c.started, bytes: got.bytes.byteLength });
    this.opts.log(
      `coordinator: checkpoint at step ${got.step} (${(got.bytes.byteLength / 1e6).toFixed(1)} MB, ${Date.now() - c.started} ms)`,
    );
    this.tick();
  }

  // ---------------------------------------------------------------- the loop

  private tick(): void {
    if (this.finished) return;
    this.expire();
    const now = Date.now();
    if (this.plan) {
      const p = this.plan;
      this.advance(p);
      if (this.plan && [...this.members.values()].some((m) => m.phase === 'new')) this.abort('a worker joined');
      else if (this.plan && now - p.progressAt > Math.max(this.opts.stepTimeoutMs, 10 * this.lastStepMs))
        this.abort(`no step acked by every member for ${now - p.progressAt} ms`);
    }
    if (this.plan || this.ckpt) {
      if (this.plan && !this.ckpt && this.checkpointDue()) this.startCheckpoint(this.plan.view[0]);
      if (this.plan) return;
    }
    if (this.ckpt) {
      if (now < this.ckpt.deadline) return;
      this.opts.log(`coordinator: checkpoint from ${this.ckpt.donor} timed out; retrying`);
      this.ckpt = undefined;
    }
    if (this.sync) {
      if (this.sync.targets.size > 0 && now < this.sync.deadline) return;
      for (const id of this.sync.targets) this.drop(id, 'did not finish loading the state in time');
      this.sync = undefined;
    }
    this.boundary();
  }

  private checkpointDue(): boolean {
    const every = this.opts.checkpointEvery;
    return this.committed > this.lastCkptStep && (this.committed === this.totalSteps() || (every > 0 && this.committed % every === 0));
  }

  /** No plan in flight: checkpoint, finish, sync joiners, or plan the rest of the run. */
  private boundary(): void {
    if (this.finished) return;
    const total = this.totalSteps();
    const d = this.donor();
    if (this.checkpointDue() && d) return this.startCheckpoint(d.id);
    if (total !== undefined && this.committed >= total && this.lastCkptStep === this.committed)
      return this.finish({ ok: true, reason: `done: ${this.committed} steps`, step: this.committed });
    const fresh = [...this.members.values()].filter((m) => m.phase === 'new');
    if (fresh.length) return this.startSync(fresh);
    const view = [...this.members.values()]
      .filter((m) => m.phase === 'ready' && m.readyStep === this.committed)
      .sort((a, b) => a.seq - b.seq);
    if (!this.started && view.length < this.opts.minWorkers) return;
    if (!view.length || total === undefined || !this.numParams || this.committed >= total) return;
    this.started = true;
    this.startPlan(
      view.map((m) => m.id),
      total,
    );
  }

  private donor(): Member | undefined {
    return [...this.members.values()].filter((m) => m.phase === 'ready' && m.readyStep === this.committed).sort((a, b) => a.seq - b.seq)[0];
  }

  /** Members a plan can have: each takes a non-empty shard of every global batch (an epoch's last one may be smaller). */
  private capacity(): number {
    return Math.min(this.opts.batchSize, this.lastBatch || this.opts.batchSize);
  }

  /** Steps a failure may cost (re-run from the last commit); checkpoints fall on commits. */
  private commitEvery(): number {
    const gcd = (a: number, b: number): number => (b ? gcd(b, a % b) : a);
    const c = Math.max(1, this.opts.commitEvery);
    return this.opts.checkpointEvery > 0 ? gcd(c, this.opts.checkpointEvery) : c;
  }

  private startPlan(ready: string[], total: number): void {
    const start = this.committed;
    const view = ready.slice(0, this.capacity());
    for (const id of ready.slice(view.length)) {
      // (only when an epoch's last batch turned out smaller than the members: they wait idle)
      this.members.delete(id);
      this.idle.add(id);
      this.opts.log(`coordinator: worker ${id} left idle: an epoch's last batch has ${this.capacity()} samples; it joins when one leaves`);
    }
    if (view.length < ready.length) this.membersChanged();
    this.membershipEpoch++;
    const { transport, store } = this.transportFor(view);
    const now = Date.now();
    this.plan = {
      start,
      until: total,
      membershipEpoch: this.membershipEpoch,
      view,
      transport,
      acked: start,
      acks: new Map(),
      rows: [],
      started: now,
      progressAt: now,
    };
    this.lastAckedAt = now;
    this.broadcast(
      'plan',
      {
        members: view,
        numParams: this.numParams,
        chunkFloats: chunkFloatsFor(this.opts.nc.info?.max_payload ?? 1 << 20),
        transport,
        store,
        until: total,
        batchSize: this.opts.batchSize,
        stepsPerEpoch: this.stepsPerEpoch,
        lastBatch: this.lastBatch || this.opts.batchSize,
        commitEvery: this.commitEvery(),
        checksumEvery: this.opts.checksumEvery,
        bucketFloats: this.opts.bucketFloats,
      },
      start,
    );
  }

  /**
   * The transport of a plan over `view`, and the rendezvous of a c10d group (rank 0's store).
   * `auto` takes nccl when every member is a CUDA worker offering it, gloo when every member
   * offers it, else nats; the choice is logged whenever it changes, with the reason.
   */
  private transportFor(view: string[]): { transport: TransportName; store: string } {
    const joins = view.map((id) => this.members.get(id)!.join);
    const all = (t: string) => joins.every((j) => j.transports.includes(t));
    let transport: TransportName;
    let why: string;
    if (this.opts.transport !== 'auto') [transport, why] = [this.opts.transport, '--transport'];
    else if (all('nccl') && joins.every((j) => j.device >= 0)) [transport, why] = ['nccl', 'every member is a CUDA worker with NCCL'];
    else if (all('gloo')) [transport, why] = ['gloo', "every member's torch addon has c10d Gloo"];
    else {
      transport = 'nats';
      const lacking = joins.filter((j) => !j.transports.includes('gloo')).map((j) => j.transportNote || `${j.backend} worker without c10d`);
      why = `not every member has c10d Gloo (${[...new Set(lacking)].join('; ')})`;
    }
    if (transport !== this.lastTransport) {
      const b = this.opts.bucketFloats;
      const how =
        transport === 'nats' ? '' : b ? `, in buckets of ${(b * 4) / 1024} KiB during the backward pass` : ', once after the backward pass';
      this.opts.log(`coordinator: gradients over ${transport}${how}: ${why}`);
    }
    this.lastTransport = transport;
    const j0 = joins[0];
    return { transport, store: transport === 'nats' ? '' : `${j0.dataHost}:${j0.storePort}` };
  }

  /** Takes the steps every member has acked, in order; commits at snapshot points. */
  private advance(p: Plan): void {
    const every = this.commitEvery();
    const e = p.error;
    if (e && (p.acked >= e.step || Date.now() - e.at > 2000)) {
      if (!this.logRows(p)) return;
      this.committed = p.acked;
      return this.fatal(`${e.reason}; the last good checkpoint is at step ${this.lastCkptStep}`);
    }
    for (let acks = p.acks.get(p.acked); acks && acks.size === p.view.length; acks = p.acks.get(p.acked)) {
      const step = p.acked;
      if (this.opts.checksumEvery > 0 && step % this.opts.checksumEvery === 0) {
        const sums = new Set([...acks.values()].map((a) => a.checksum));
        if (sums.size !== 1) {
          const who = [...acks].map(([id, a]) => `${id}=${a.checksum}`).join(' ');
          return this.fatal(`parameter checksum mismatch before step ${step}: ${who}; the replicas diverged, stopping`);
        }
      }
      p.acks.delete(step);
      p.rows.push(this.row(p, step, acks));
      p.acked = step + 1;
      p.progressAt = Date.now();
      if (p.acked % every === 0 || p.acked === p.until) this.commit(p);
      if (e && p.acked >= e.step) return this.advance(p);
    }
  }

  /** Appends the committed steps' lines; a line that cannot be written (ENOSPC, EIO, ...) stops the run, the log left without a torn line. */
  private logRows(p: Plan): boolean {
    const rows = p.rows;
    p.rows = [];
    for (const r of rows) {
      this.telemetry.stepsCommitted++;
      this.telemetry.emit('step', r.report);
      try {
        this.dir.log(r.log);
      } catch (e) {
        this.fatal(
          `cannot append step ${r.log.step} to ${this.dir.logPath}: ${(e as Error).message}; the last checkpoint (step ${this.lastCkptStep}) is intact`,
        );
        return false;
      }
    }
    return true;
  }

  /** Steps before p.acked are durable: logged, and a re-plan never goes back before them. */
  private commit(p: Plan): void {
    this.committed = p.acked;
    if (!this.logRows(p)) return;
    for (const m of this.members.values()) {
      if (p.view.includes(m.id)) m.readyStep = this.committed;
      else if (m.phase === 'ready') m.phase = 'new'; // not in this plan: needs the state again
    }
    if (p.acked === p.until) this.plan = undefined;
    this.broadcast('commit', { step: this.committed }, this.committed);
  }

  private row(p: Plan, step: number, byWorker: Map<string, Ack>): StepRow {
    const acks = [...byWorker.values()];
    const now = Date.now();
    // A step's time is the interval between the moments consecutive steps were acked by
    // every member (the first: since the plan), at least the slowest worker's own step.
    const interval = now - this.lastAckedAt;
    this.lastAckedAt = now;
    const max = (f: (a: Ack) => number) => Math.max(...acks.map(f));
    const stepMs = Math.max(
      interval,
      max((a) => a.stepMs),
    );
    this.lastStepMs = stepMs;
    let lossSum = 0;
    for (const id of p.view) lossSum += byWorker.get(id)!.lossSum; // rank order
    const batch = this.batchOf(step);
    const report: StepReport = {
      run: this.opts.run,
      step,
      lossMean: lossSum / batch,
      workers: p.view.length,
      stepMs,
      transport: p.transport,
      computeMs: max((a) => a.computeMs),
      allreduceMs: max((a) => a.allreduceMs),
      waitMs: max((a) => a.waitMs),
      bytesSent: acks.reduce((s, a) => s + a.bytesSent, 0) / acks.length,
      bytesReceived: acks.reduce((s, a) => s + a.bytesReceived, 0) / acks.length,
      imagesPerSec: (batch * 1000) / Math.max(1e-3, stepMs),
    };
    return {
      report,
      log: {
        step,
        loss: report.lossMean,
        workers: report.workers,
        transport: p.transport,
        ms: stepMs,
        compute_ms: report.computeMs,
        allreduce_ms: report.allreduceMs,
        wait_ms: report.waitMs,
        bytes_sent: report.bytesSent,
        bytes_received: report.bytesReceived,
        time: new Date(now).toISOString(),
      },
    };
  }

  /** Samples in step k's global batch: --batch-size, but an epoch's last batch holds the data set's remainder. */
  private batchOf(step: number): number {
    const spe = this.stepsPerEpoch;
    return spe && this.lastBatch && step % spe === spe - 1 ? this.lastBatch : this.opts.batchSize;
  }

  /**
   * Ends the plan in flight: the members still here hold a snapshot of the last commit, the
   * plan's acked but uncommitted steps are forgotten (to be re-run), and the membership
   * epoch grows, so the next control message stops every worker's steps.
   */
  private abort(reason: string): void {
    const p = this.plan;
    if (!p) return;
    this.plan = undefined;
    this.membershipEpoch++;
    for (const id of p.view) {
      const m = this.members.get(id);
      if (m?.phase === 'ready') m.readyStep = this.committed;
    }
    this.telemetry.stepsAborted++;
    this.telemetry.emit('abort', { step: p.acked, reason });
    this.opts.log(
      `coordinator: plan aborted at step ${p.acked} (${reason}); back to the commit at step ${this.committed} over ${this.members.size} worker(s)`,
    );
  }

  private startSync(targets: Member[]): void {
    const transfer = `${this.opts.run}-${this.record.incarnation}-${++this.transfers}`;
    const init = this.committed === 0 && !this.state;
    const source = this.state && this.state.step === this.committed ? 'coordinator' : this.donor();
    if (!init && !source) {
      // No member holds step `committed`, but a worker of this session that was dropped and came back does: it keeps it.
      const keepers = this.rolledBack ? [] : targets.filter((m) => m.holds === this.committed);
      if (keepers.length) return this.keep(keepers);
      // Every worker that held step `committed` is gone: fall back to the last checkpoint.
      const to = this.state?.step ?? 0;
      this.opts.log(
        `coordinator: no live worker holds step ${this.committed}; rolling back to ${this.state ? `the checkpoint at step ${to}` : 'step 0 (no checkpoint yet)'}`,
      );
      this.committed = to;
      this.membershipEpoch++;
      this.rolledBack = true;
      return this.startSync(targets);
    }
    this.sync = {
      transfer,
      targets: new Set(targets.map((m) => m.id)),
      deadline: Date.now() + this.opts.syncTimeoutMs,
      donor: source === 'coordinator' ? undefined : source?.id,
    };
    if (source === 'coordinator' && this.state!.checksum) this.sync.expect = this.state!.checksum;
    for (const m of targets) {
      m.phase = 'syncing';
      m.transfer = init ? '' : transfer;
      this.send(subjects.worker(this.opts.run, m.id), 'welcome', {
        configJson: this.record.configJson,
        committed: this.committed,
        init,
        transfer: m.transfer,
        nonce: m.join.nonce,
        keep: false,
      });
    }
    if (init) return;
    if (source === 'coordinator') {
      const header = {
        run: this.opts.run,
        worker: '',
        step: this.state!.step,
        membershipEpoch: this.membershipEpoch,
        session: this.session,
      };
      for (const m of targets)
        void sendState(
          this.opts.nc,
          subjects.worker(this.opts.run, m.id),
          header,
          this.sender,
          transfer,
          this.state!.bytes,
          this.state!.checksum,
        ).catch(() => {});
    } else {
      const ids = targets.map((m) => m.id);
      this.broadcast('stateRequest', { donor: source!.id, targets: ids, step: this.committed, transfer });
    }
  }

  /**
   * Workers of this session that were dropped (their heartbeats missed, e.g. while they were
   * paused) and came back holding step `committed`: the commits they applied are this
   * session's, so their state is the run's. They keep it (their checksums must agree) instead
   * of the run rolling back to its checkpoint.
   */
  private keep(keepers: Member[]): void {
    this.sync = { transfer: '', targets: new Set(keepers.map((m) => m.id)), deadline: Date.now() + this.opts.syncTimeoutMs };
    for (const m of keepers) {
      this.opts.log(`coordinator: worker ${m.id} came back holding step ${this.committed}: it keeps its state (no roll-back)`);
      m.phase = 'syncing';
      m.transfer = '';
      this.send(subjects.worker(this.opts.run, m.id), 'welcome', {
        configJson: this.record.configJson,
        committed: this.committed,
        init: false,
        transfer: '',
        nonce: m.join.nonce,
        keep: true,
      });
    }
  }

  /** The donor exports its state (or snapshot) of step `committed`; a plan in flight goes on. */
  private startCheckpoint(donor: string): void {
    const transfer = `${this.opts.run}-${this.record.incarnation}-${++this.transfers}`;
    const now = Date.now();
    this.ckpt = { transfer, donor, step: this.committed, deadline: now + this.opts.syncTimeoutMs, started: now };
    this.broadcast('stateRequest', { donor, targets: [''], step: this.committed, transfer });
  }

  // ---------------------------------------------------------------- membership

  /**
   * Liveness, judged only over time the coordinator itself could see: while its broker
   * connection is down nobody is judged (every deadline restarts at the reconnect), and a gap
   * in its own ticks (it was paused) moves every deadline on by the gap.
   */
  private expire(): void {
    const now = performance.now();
    const gap = now - this.lastLook;
    this.lastLook = now;
    if (gap > PAUSE_GAP_MS) this.paused(gap);
    if (this.disconnected) return;
    for (const m of [...this.members.values()]) {
      if (now - m.lastSeen > this.opts.heartbeatTimeoutMs) this.drop(m.id, `no heartbeat for ${((now - m.lastSeen) / 1000).toFixed(1)} s`);
    }
  }

  /** The coordinator was not running for `ms`: no worker's deadline, and no step's or transfer's, counts that time. */
  private paused(ms: number): void {
    // (said when it would have cost a worker its place; shorter stalls, e.g. a busy machine, only move the deadlines)
    if (ms >= this.opts.heartbeatTimeoutMs)
      this.opts.log(`coordinator: this process did not run for ${(ms / 1000).toFixed(1)} s; worker deadlines are extended by as much`);
    for (const m of this.members.values()) m.lastSeen += ms;
    if (this.plan) this.plan.started += ms;
    if (this.sync) this.sync.deadline += ms;
    if (this.ckpt) this.ckpt.deadline += ms;
  }

  private drop(id: string, reason: string, announce = true): void {
    if (!this.members.delete(id)) return;
    if (announce) this.opts.log(`coordinator: worker ${id} removed: ${reason}`);
    if (this.plan?.view.includes(id)) this.abort(`worker ${id} ${reason}`);
    this.sync?.targets.delete(id);
    if (this.sync?.donor === id) {
      // the state was coming from it: start the transfer again from another source
      for (const t of this.sync.targets) this.members.get(t)!.phase = 'new';
      this.sync = undefined;
    }
    if (this.ckpt?.donor === id) this.ckpt = undefined;
    this.membersChanged();
  }

  private membersChanged(): void {
    this.telemetry.liveWorkers = this.members.size;
    this.telemetry.emit('members', { live: this.members.size, workers: [...this.members.keys()] });
  }

  /** A broker reconnect may have lost messages: give members a grace period and redo the phase. */
  private async watchConnection(): Promise<void> {
    for await (const s of this.opts.nc.status()) {
      if (this.finished) continue;
      if (s.type === 'disconnect') {
        if (!this.disconnected) this.opts.log('coordinator: lost the NATS connection; no worker is judged until it is back');
        this.disconnected = true;
      }
      if (s.type !== 'reconnect') continue;
      this.disconnected = false;
      for (const m of this.members.values()) m.lastSeen = performance.now();
      this.redo('the coordinator reconnected to NATS');
      this.tick();
    }
  }

  /** Messages may have been lost: abort the phase in flight, to be redone under a new epoch. */
  private redo(why: string): void {
    if (!this.plan && !this.sync && !this.ckpt) return;
    this.opts.log(`coordinator: ${why}; redoing the current phase`);
    this.abort(why);
    if (this.sync) for (const id of this.sync.targets) this.members.get(id)!.phase = 'new';
    this.sync = undefined;
    this.ckpt = undefined;
  }

  // ---------------------------------------------------------------- the end

  private fatal(reason: string): void {
    this.opts.log(`coordinator: STOPPING RUN ${this.opts.run}: ${reason}`);
    this.finish({ ok: false, reason, step: this.committed });
  }

  private finish(r: RunResult, announce = true): void {
    if (this.finished) return;
    this.finished = true;
    clearInterval(this.timer);
    if (announce) this.broadcast('stop', { reason: r.reason, ok: r.ok, nonce: 0 });
    this.telemetry.emit('done', r);
    this.resolve(r);
  }
}
