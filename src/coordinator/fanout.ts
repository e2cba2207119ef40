/**
 * The coordinator's side of a task: publish its jobs on the run's work queue, collect the
 * results from the result stream, and assemble them in index order.
 *
 *   1. ensure the streams and the workers' consumer (ack wait, max deliver);
 *   2. open an ordered consumer on this task's result subject (before any job is out);
 *   3. publish the jobs (msgID task-index: a retried publish is not queued twice);
 *   4. take results as they come: a complete result fills its index range (the first one
 *      wins; later duplicates of a redelivered job are identical and ignored); a failure
 *      result ends the task with the worker's error; so does a MAX_DELIVERIES advisory for
 *      one of our jobs (every delivery timed out: workers died or hang);
 *   5. purge the task's subjects from both streams, whatever happened.
 */
import { randomBytes } from 'node:crypto';
import type { JsMsg, NatsConnection } from 'nats';
import { ensureQueue, jetstreamManager, type QueueOptions } from '../cluster/jetstream.js';
import { batchSizeOf, planJobs, type JobRange, type TaskSpec } from '../protocol/job-spec.js';
import {
  JobWireError,
  ResultAssembler,
  decodeResult,
  encodeJob,
  payloadValues,
  type AssembledResult,
  type JobResultChunk,
} from '../protocol/jobs.js';
import { WORKERS_CONSUMER, jobSubjects, streams } from '../protocol/subjects.js';

export interface TaskOptions {
  nc: NatsConnection;
  run: string;
  spec: TaskSpec;
  /** Items: samples to draw, or images of the split. */
  n: number;
  /** Whole batches per job (default 1). */
  batchesPerJob?: number;
  queue?: QueueOptions;
  /** Task id (default: random); a subject token. */
  task?: string;
  log?: (line: string) => void;
  /** After every completed job. */
  onJob?: (job: AssembledResult, p: TaskProgress) => void;
  /** About once a second: jobs waiting in the queue (not yet delivered to any worker). */
  onQueueDepth?: (waiting: number) => void;
  /** Say how to start workers if none took a job after this long (default 15 s). */
  idleWarnMs?: number;
  /**
   * Results of jobs done before (a resumed task, see cli/jobs.ts): a job whose range is here is
   * not queued; its result is placed as if a worker had just sent it.
   */
  done?: (job: JobRange) => AssembledResult | undefined;
}

export interface TaskProgress {
  jobs: number;
  jobsDone: number;
  items: number;
  itemsDone: number;
}

export interface TaskOutcome {
  task: string;
  jobs: JobRange[];
  /** Sample: n*d float32 values; likelihood: n float64 bits/dim. */
  values: Float32Array | Float64Array;
  /** Likelihood: each image's probe variance of its bits/dim (likelihood.ts probeVar). */
  probeVar?: Float64Array;
  /** Sample: [h, w, c] of one item. */
  shape: number[];
  nfe: Int32Array;
  calls: number;
  /** Jobs done per worker (in this run: not those of TaskOptions.done). */
  workers: Map<string, number>;
  backends: Set<string>;
  /** Which weights the workers loaded ("ema" / "raw"). */
  weights: Set<string>;
  /** Jobs whose result came from a redelivery. */
  redelivered: number;
}

export class TaskFailed extends Error {}

export async function runTask(opts: TaskOptions): Promise<TaskOutcome> {
  const log = opts.log ?? (() => {});
  const { nc, run, spec } = opts;
  const task = opts.task ?? `t${randomBytes(6).toString('hex')}`;
  const jobs = planJobs(opts.n, batchSizeOf(spec), opts.batchesPerJob ?? 1);
  const jsm = await jetstreamManager(nc);
  await ensureQueue(jsm, run, opts.queue);
  const js = nc.jetstream();
  const results = await (await js.consumers.get(streams.results(run), { filterSubjects: jobSubjects.result(run, task) })).consume();
  const collector = new Collector(opts, task, jobs, log);
  const todo = jobs.filter((j) => {
    const r = opts.done?.(j);
    if (r) collector.placeDone({ ...r, index: j.index });
    return !r;
  });
  if (todo.length === 0) return collector.outcome();
  const seqToJob = new Map<number, number>();
  const advisory = nc.subscribe(`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${streams.jobs(run)}.${WORKERS_CONSUMER}`, {
    callback: (err, m) => {
      if (err) return;
      const a = m.json<{ stream_seq?: number; deliveries?: number }>();
      const index = seqToJob.get(a.stream_seq ?? -1);
      if (index === undefined || collector.isDone(index)) return;
      const j = jobs[index];
      collector.fail(
        `job ${index} [${j.from}, ${j.to}) was delivered ${a.deliveries} times without a result: its workers died or hung each time (see --ack-wait, --max-deliver)`,
      );
      results.stop();
    },
  });
  const timers = watchQueue(opts, jsm, run, collector, log);
  try {
    const specJson = JSON.stringify(spec);
    for (const j of todo) {
      const ack = await js.publish(
        jobSubjects.todo(run, task),
        encodeJob({ run, task, index: j.index, jobs: jobs.length, from: j.from, to: j.to, kind: spec.kind, specJson }),
        {
          msgID: `${task}-${j.index}`,
        },
      );
      seqToJob.set(ack.seq, j.index);
    }
    log(
      `coordinator: task ${task}: ${todo.length} job(s)${todo.length < jobs.length ? ` (of ${jobs.length}; the others were done before)` : ''} of up to ${jobs[0].to - jobs[0].from} ${spec.kind === 'sample' ? 'samples' : 'images'} queued on ${streams.jobs(run)}`,
    );
    for await (const m of results) {
      if (collector.take(m) === 'stop') break;
    }
    return collector.outcome();
  } finally {
    clearInterval(timers);
    results.stop();
    advisory.unsubscribe();
    // Leftover jobs of a failed task, and the results of any task, are of no further use.
    await jsm.streams.purge(streams.jobs(run), { filter: jobSubjects.todo(run, task) }).catch(() => {});
    await jsm.streams.purge(streams.results(run), { filter: jobSubjects.result(run, task) }).catch(() => {});
  }
}

/** Polls the consumer once a second: queue depth for metrics, and a hint when nobody works. */
function watchQueue(
  opts: TaskOptions,
  jsm: Awaited<ReturnType<typeof jetstreamManager>>,
  run: string,
  c: Collector,
  log: (l: string) => void,
): NodeJS.Timeout {
  const started = Date.now();
  let warned = false;
  const t = setInterval(() => {
    void jsm.consumers.info(streams.jobs(run), WORKERS_CONSUMER).then(
      (info) => {
        opts.onQueueDepth?.(info.num_pending);
        if (!warned && c.progress.jobsDone === 0 && info.num_ack_pending === 0 && Date.now() - started > (opts.idleWarnMs ?? 15_000)) {
          warned = true;
          log(
            `coordinator: no worker has taken a job of run ${run} yet; start workers with: worker start --nats ${opts.nc.getServer()} --run ${run}`,
          );
        }
      },
      () => {},
    );
  }, 1000);
  t.unref();
  return t;
}

/** Results in, values out: validation, assembly, placement in index order. */
class Collector {
  readonly progress: TaskProgress;
  private readonly asm = new ResultAssembler();
  private values?: Float32Array | Float64Array;
  private probeVar?: Float64Array;
  private itemSize = 0;
  private shape: number[] = [];
  private readonly nfe: Int32Array;
  private calls = 0;
  private readonly workers = new Map<string, number>();
  private readonly backends = new Set<string>();
  private readonly weights = new Set<string>();
  private redelivered = 0;
  private failure?: string;

  constructor(
    private readonly opts: TaskOptions,
    private readonly task: string,
    private readonly jobs: JobRange[],
    private readonly log: (l: string) => void,
  ) {
    this.progress = { jobs: jobs.length, jobsDone: 0, items: opts.n, itemsDone: 0 };
    this.nfe = new Int32Array(opts.n);
  }

  /** A result from an earlier run of the task (TaskOptions.done). */
  placeDone(r: AssembledResult): void {
    this.place(r, true);
  }

  isDone(index: number): boolean {
    return this.asm.isDone(index);
  }

  fail(reason: string): void {
    this.failure ??= reason;
  }

  /** One result message; 'stop' when the task is complete or failed. */
  take(m: JsMsg): 'more' | 'stop' {
    if (this.failure) return 'stop';
    let c: JobResultChunk;
    try {
      c = decodeResult(m.data);
      const j = this.jobs[c.index];
      if (c.run !== this.opts.run || c.task !== this.task || !j || j.from !== c.from || j.to !== c.to) {
        throw new JobWireError('bad_chunk', `result for ${c.run}/${c.task} job ${c.index} [${c.from}, ${c.to})`);
      }
    } catch (e) {
      this.log(`coordinator: dropped a result message: ${(e as Error).message}`);
      return 'more';
    }
    if (c.error) {
      // The worker terminated the job: it will not be retried; nor will the task.
      this.fail(`worker ${c.worker}: ${c.error}`);
      return 'stop';
    }
    let r: AssembledResult | undefined;
    try {
      r = this.asm.add(c);
      if (r) this.place(r);
    } catch (e) {
      this.log(`coordinator: dropped a result of job ${c.index} from ${c.worker}: ${(e as Error).message}`);
      return 'more';
    }
    return this.progress.jobsDone === this.jobs.length ? 'stop' : 'more';
  }

  private place(r: AssembledResult, earlier = false): void {
    const m = r.to - r.from;
    if (r.nfe.length !== m) throw new JobWireError('bad_chunk', `${r.nfe.length} nfe values for ${m} items`);
    if (this.opts.spec.kind === 'sample') {
      const v = payloadValues(r.payload, Float32Array);
      if (!this.values) {
        this.itemSize = v.length / m;
        this.shape = r.shape;
        if (!(Number.isInteger(this.itemSize) && this.itemSize > 0 && r.shape.reduce((a, b) => a * b, 1) === this.itemSize)) {
          throw new JobWireError('bad_chunk', `${v.length} values for ${m} samples of shape [${r.shape.join(',')}]`);
        }
        this.values = new Float32Array(this.opts.n * this.itemSize);
      }
      if (v.length !== m * this.itemSize) throw new JobWireError('bad_chunk', `${v.length} values for ${m} samples of ${this.itemSize}`);
      this.values.set(v, r.from * this.itemSize);
    } else {
      // m bits/dim values, then their m probe variances
      const v = payloadValues(r.payload, Float64Array);
      if (v.length !== 2 * m) throw new JobWireError('bad_chunk', `${v.length} values for ${m} images (bits/dim and probe variances)`);
      this.values ??= new Float64Array(this.opts.n);
      this.probeVar ??= new Float64Array(this.opts.n);
      this.values.set(v.subarray(0, m), r.from);
      this.probeVar.set(v.subarray(m), r.from);
    }
    this.nfe.set(r.nfe, r.from);
    this.calls += r.calls;
    if (!earlier) this.workers.set(r.worker, (this.workers.get(r.worker) ?? 0) + 1);
    if (r.backend) this.backends.add(r.backend);
    if (r.weights) this.weights.add(r.weights);
    if (r.delivery > 1) {
      this.redelivered++;
      this.log(`coordinator: job ${r.index} [${r.from}, ${r.to}) done by ${r.worker} on delivery ${r.delivery} (redelivered)`);
    }
    this.progress.jobsDone++;
    this.progress.itemsDone += m;
    this.opts.onJob?.(r, this.progress);
  }

  outcome(): TaskOutcome {
    if (this.failure) throw new TaskFailed(this.failure);
    if (!this.values || this.progress.jobsDone !== this.jobs.length)
      throw new TaskFailed(`task ${this.task} ended with ${this.progress.jobsDone} of ${this.jobs.length} jobs done`);
    return {
      task: this.task,
      jobs: this.jobs,
      values: this.values,
      probeVar: this.probeVar,
      shape: this.shape,
      nfe: this.nfe,
      calls: this.calls,
      workers: this.workers,
      backends: this.backends,
      weights: this.weights,
      redelivered: this.redelivered,
    };
  }
}
