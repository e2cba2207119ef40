/**
 * A worker's job runner: while the worker is not in a training run, it pulls sampling and
 * likelihood jobs from the run's JetStream work queue, computes them, publishes the result
 * and acks. The protocol, per job message:
 *
 *   compute      batch by batch (the same batches as the single-process CLI), yielding to
 *                the event loop between batches; every network evaluation may send +WPI
 *                ("working", at most once a second) so that ack_wait only catches dead workers;
 *   publish      the result in chunks under max_payload, each stored by the result stream
 *                (js.publish waits for the server's ack);
 *   ack          only then, so an acked job always has a stored result.
 *   fail         an error of the job itself (checkpoint does not load, bad data, ...):
 *                publish a failure result and terminate (+TERM) the message, so it is not
 *                redelivered to fail again elsewhere; the coordinator shows the error once.
 *   transport    a NATS error while publishing: nak, so the job is redelivered.
 *
 * The model and the images are loaded once per spec and kept while jobs of that spec come.
 */
import { EventEmitter } from 'node:events';
import { setImmediate as yieldToLoop, setTimeout as sleep } from 'node:timers/promises';
import type { Consumer, JetStreamClient, JsMsg, NatsConnection } from 'nats';
import { checkImageShape, loadImages } from '../core/data/mnist.js';
import { readNpy } from '../core/io/npy.js';
import { likelihoodRange } from '../core/likelihood.js';
import { sampleRange, type SampleOptions } from '../core/sampling/index.js';
import { loadScoreModel, type NetScoreModel } from '../core/score/net.js';
import type { ScoreModel } from '../core/score/batch.js';
import { isNotFound } from '../cluster/jetstream.js';
import { batchSizeOf, type LikelihoodSpec, type SampleSpec, type TaskSpec } from '../protocol/job-spec.js';
import { toLEBytes } from '../core/io/endian.js';
import { JobWireError, chunkResult, decodeJob, encodeResult, type Job, type JobResultChunk } from '../protocol/jobs.js';
import { WORKERS_CONSUMER, jobSubjects, streams } from '../protocol/subjects.js';

export interface JobRunnerOptions {
  nc: NatsConnection;
  run: string;
  /** This worker's id (results name it). */
  id: string;
  /** The tfjs backend in use (reported with results). */
  backend: string;
  /** Jobs are taken only while this says so (default: always). The training path keeps priority. */
  isIdle?: () => boolean;
  /** How long one pull waits for a job (default 2 s). */
  pullMs?: number;
  /** Interval of the "working" signal while computing (default 1 s; ack_wait must be well above it). */
  workingMs?: number;
  log?: (line: string) => void;
}

/** What a finished job did, for metrics. */
export interface JobEvent {
  kind: 'sample' | 'likelihood';
  items: number;
  /** Score evaluations summed over the items. */
  nfe: number;
  seconds: number;
  ok: boolean;
}

interface Computed {
  payload: Uint8Array;
  nfe: number[];
  calls: number;
  shape: number[];
}

interface Loaded {
  key: string;
  model: NetScoreModel;
  images?: Float32Array;
  latent?: Float32Array;
}

export class JobRunner extends EventEmitter<{ job: [JobEvent] }> {
  private readonly opts: Required<JobRunnerOptions>;
  private readonly js: JetStreamClient;
  private consumer?: Consumer;
  private loaded?: Loaded;
  private failed?: { key: string; error: string };
  private current?: JsMsg;
  private busy?: Promise<void>;
  private closed = false;
  private loop?: Promise<void>;

  constructor(opts: JobRunnerOptions) {
    super();
    this.opts = { isIdle: () => true, pullMs: 2000, workingMs: 1000, log: () => {}, ...opts };
    this.js = opts.nc.jetstream();
  }

  start(): void {
    this.loop ??= this.run();
  }

  /**
   * Stops pulling; a job in progress is nak'ed so that another worker takes it at once, and
   * its computation stops at the next batch boundary. A pending pull is not waited for: a
   * message it still gets is nak'ed by the loop (or redelivered after ack_wait).
   */
  async close(): Promise<void> {
    this.closed = true;
    this.current?.nak();
    await this.busy?.catch(() => {});
    this.loaded?.model.dispose();
    this.loaded = undefined;
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      if (!this.opts.isIdle()) {
        await sleep(500);
        continue;
      }
      let m: JsMsg | null;
      try {
        this.consumer ??= await this.js.consumers.get(streams.jobs(this.opts.run), WORKERS_CONSUMER);
        m = await this.consumer.next({ expires: this.opts.pullMs });
      } catch (e) {
        // No queue yet (no task was ever started for this run), or the connection is down.
        if (!isNotFound(e)) this.opts.log(`worker ${this.opts.id}: jobs: ${(e as Error).message}`);
        this.consumer = undefined;
        await sleep(1000);
        continue;
      }
      if (!m || this.closed) {
        m?.nak();
        continue;
      }
      this.current = m;
      this.busy = this.handle(m);
      try {
        await this.busy;
      } finally {
        this.current = undefined;
        this.busy = undefined;
      }
    }
  }

  private async handle(m: JsMsg): Promise<void> {
    let job: Job;
    try {
      job = decodeJob(m.data);
      if (job.run !== this.opts.run) throw new JobWireError('undecodable', `job of run ${job.run}`);
    } catch (e) {
      this.opts.log(`worker ${this.opts.id}: terminated an unreadable job message: ${(e as Error).message}`);
      return m.term();
    }
    const head = {
      run: job.run,
      task: job.task,
      index: job.index,
      from: job.from,
      to: job.to,
      worker: this.opts.id,
      attempt: `${this.opts.id}#${m.info.deliveryCount}`,
      delivery: m.info.deliveryCount,
    };
    this.opts.log(
      `worker ${this.opts.id}: job ${job.index}/${job.jobs} [${job.from}, ${job.to}) of task ${job.task} (${job.kind}, delivery ${m.info.deliveryCount})`,
    );
    const t0 = performance.now();
    let out: Computed;
    try {
      out = await this.compute(job, m);
    } catch (e) {
      const error = (e as Error).message.split('\n')[0];
      this.opts.log(`worker ${this.opts.id}: job ${job.index} of task ${job.task} failed: ${error}`);
      await this.publish(
        { ...head, nfe: [], calls: 0, seconds: 0, backend: this.opts.backend, weights: '', shape: [], error },
        new Uint8Array(0),
      ).catch(() => {});
      m.term(error);
      this.emit('job', { kind: job.kind, items: 0, nfe: 0, seconds: 0, ok: false });
      return;
    }
    if (this.closed) return; // nak'ed by close(): another worker redoes it
    const seconds = (performance.now() - t0) / 1000;
    try {
      await this.publish(
        {
          ...head,
          nfe: out.nfe,
          calls: out.calls,
          seconds,
          backend: this.opts.backend,
          weights: this.loaded?.model.which ?? '',
          shape: out.shape,
          error: '',
        },
        out.payload,
      );
      await m.ackAck();
    } catch (e) {
      this.opts.log(
        `worker ${this.opts.id}: job ${job.index}: could not deliver the result (${(e as Error).message}); releasing it for redelivery`,
      );
      m.nak(1000);
      return;
    }
    this.emit('job', { kind: job.kind, items: job.to - job.from, nfe: out.nfe.reduce((a, b) => a + b, 0), seconds, ok: true });
  }

  private async publish(
    head: Omit<JobResultChunk, 'chunk' | 'chunks' | 'offset' | 'totalBytes' | 'data'>,
    payload: Uint8Array,
  ): Promise<void> {
    const subject = jobSubjects.result(head.run, head.task);
    for (const c of chunkResult(head, payload, this.opts.nc.info?.max_payload ?? 1024 * 1024)) {
      await this.js.publish(subject, encodeResult(c));
    }
  }

  /** Loads what the spec needs (cached) and runs its batches. */
  private async compute(job: Job, m: JsMsg): Promise<Computed> {
    const spec = JSON.parse(job.specJson) as TaskSpec;
    if (spec.kind !== job.kind) throw new Error(`job of kind ${job.kind} carries a ${spec.kind} spec`);
    const loaded = this.load(job.specJson, spec);
    // Every network evaluation is a chance to tell the server we are alive (throttled).
    let last = performance.now();
    const model: ScoreModel = {
      sde: loaded.model.sde,
      shape: loaded.model.shape,
      score: (x, t) => {
        const now = performance.now();
        if (now - last >= this.opts.workingMs) {
          last = now;
          m.working();
        }
        return loaded.model.score(x, t);
      },
    };
    return spec.kind === 'sample' ? this.sample(model, spec, loaded, job) : this.likelihood(model, spec, loaded, job);
  }

  private load(key: string, spec: TaskSpec): Loaded {
    // The ranges differ between jobs, not the spec: one model (and data set) per task.
    if (this.loaded?.key === key) return this.loaded;
    // A spec that failed to load fails again at once (the task's other jobs, until the coordinator purges them).
    if (this.failed?.key === key) throw new Error(this.failed.error);
    try {
      return this.loadFresh(key, spec);
    } catch (e) {
      this.failed = { key, error: (e as Error).message };
      throw e;
    }
  }

  private loadFresh(key: string, spec: TaskSpec): Loaded {
    this.loaded?.model.dispose();
    this.loaded = undefined;
    const model = loadScoreModel(spec.ckpt, { ema: !spec.raw });
    const l: Loaded = { key, model };
    try {
      const [h, w] = model.shape;
      if (spec.kind === 'likelihood') {
        const images = loadImages(spec.data, { limit: spec.limit });
        checkImageShape(images, model.shape);
        l.images = images.data;
      } else if (spec.latent !== undefined) {
        const { data } = readNpy(spec.latent);
        if (data.length % (h * w) !== 0) throw new Error(`${spec.latent}: latent values are not whole ${h}x${w} rows`);
        l.latent = data;
      }
    } catch (e) {
      model.dispose();
      throw e;
    }
    this.loaded = l;
    return l;
  }

  private async sample(model: ScoreModel, spec: SampleSpec, l: Loaded, job: Job): Promise<Computed> {
    const bs = batchSizeOf(spec);
    const d = l.model.shape[0] * l.model.shape[1] * l.model.shape[2];
    const samples = new Float32Array((job.to - job.from) * d);
    const nfe: number[] = [];
    let calls = 0;
    const opts: SampleOptions = { ...spec.options, latent: l.latent };
    for (let a = job.from; a < job.to && !this.closed; a += bs) {
      const r = await sampleRange(model, opts, a, Math.min(job.to, a + bs));
      samples.set(r.samples, (a - job.from) * d);
      nfe.push(...r.nfe);
      calls += r.calls;
      await yieldToLoop();
    }
    return { payload: toLEBytes(samples), nfe, calls, shape: [...l.model.shape] };
  }

  private async likelihood(model: ScoreModel, spec: LikelihoodSpec, l: Loaded, job: Job): Promise<Computed> {
    const bs = spec.options.batchSize;
    // payload: the job's m bits/dim values, then their m probe variances (likelihood.ts)
    const m = job.to - job.from;
    const out = new Float64Array(2 * m);
    const nfe: number[] = [];
    let calls = 0;
    for (let a = job.from; a < job.to && !this.closed; a += bs) {
      const r = await likelihoodRange(model, l.images!, a, Math.min(job.to, a + bs), spec.options);
      out.set(r.bpd, a - job.from);
      out.set(r.probeVar, m + a - job.from);
      nfe.push(...r.nfe);
      calls += r.calls;
      await yieldToLoop();
    }
    return { payload: toLEBytes(out), nfe, calls, shape: [] };
  }
}
