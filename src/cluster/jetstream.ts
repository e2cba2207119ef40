/**
 * The JetStream side of the job protocol: the run's work-queue stream with its durable pull
 * consumer, and its result stream. The coordinator creates (or updates) them before a task;
 * workers only bind to the consumer, so its delivery settings are the coordinator's.
 *
 *   work queue  WorkQueue retention: a job is deleted once acked. Explicit acks; a job not
 *               acked within ack_wait (a dead or wedged worker: live ones send +WPI "working"
 *               while they compute) is redelivered, at most max_deliver times. A job that
 *               cannot succeed is terminated (+TERM) by the worker, never redelivered.
 *   results     Limits retention, file storage, one day max age: a worker acks its job only
 *               after the server stored its result, so no result is lost between the two;
 *               the coordinator purges its task's subject when it is done.
 */
import { AckPolicy, DiscardPolicy, RetentionPolicy, StorageType, nanos, type JetStreamManager, type NatsConnection } from 'nats';
import { WORKERS_CONSUMER, jobSubjects, streams } from '../protocol/subjects.js';

export interface QueueOptions {
  /** Redeliver a job not acked (nor marked working) for this long (default 30 s). */
  ackWaitMs?: number;
  /** Deliveries of one job before it is given up (default 5). */
  maxDeliver?: number;
  /** JetStream storage (default file). */
  storage?: 'file' | 'memory';
}

export const QUEUE_DEFAULTS = { ackWaitMs: 30_000, maxDeliver: 5, storage: 'file' } as const;

/** The JetStream manager, or an error that says how to get JetStream. */
export async function jetstreamManager(nc: NatsConnection): Promise<JetStreamManager> {
  try {
    return await nc.jetstreamManager({ timeout: 10_000 });
  } catch (e) {
    const msg = (e as Error).message;
    if (/503|no responders|not enabled/i.test(msg))
      throw new Error(`JetStream is not enabled on ${nc.getServer()}: start nats-server with -js (jobs need a work-queue stream)`);
    throw new Error(`JetStream on ${nc.getServer()}: ${msg}`);
  }
}

/** Creates or updates the run's streams and the workers' consumer. */
export async function ensureQueue(jsm: JetStreamManager, run: string, opts: QueueOptions = {}): Promise<void> {
  const o = { ...QUEUE_DEFAULTS, ...opts };
  const storage = o.storage === 'memory' ? StorageType.Memory : StorageType.File;
  await upsertStream(jsm, {
    name: streams.jobs(run),
    subjects: [jobSubjects.allTodo(run)],
    retention: RetentionPolicy.Workqueue,
    storage,
    discard: DiscardPolicy.Old,
  });
  await upsertStream(jsm, {
    name: streams.results(run),
    subjects: [jobSubjects.allResults(run)],
    retention: RetentionPolicy.Limits,
    storage,
    max_age: nanos(24 * 3600_000),
    discard: DiscardPolicy.Old,
  });
  const consumer = {
    durable_name: WORKERS_CONSUMER,
    ack_policy: AckPolicy.Explicit,
    ack_wait: nanos(o.ackWaitMs),
    max_deliver: o.maxDeliver,
    filter_subject: jobSubjects.allTodo(run),
    max_ack_pending: -1,
  };
  try {
    await jsm.consumers.info(streams.jobs(run), WORKERS_CONSUMER);
    await jsm.consumers.update(streams.jobs(run), WORKERS_CONSUMER, { ack_wait: consumer.ack_wait, max_deliver: consumer.max_deliver });
  } catch (e) {
    if (!isNotFound(e)) throw e;
    await jsm.consumers.add(streams.jobs(run), consumer);
  }
}

type StreamConfigIn = Parameters<JetStreamManager['streams']['add']>[0];

async function upsertStream(jsm: JetStreamManager, cfg: StreamConfigIn & { name: string }): Promise<void> {
  try {
    await jsm.streams.info(cfg.name);
  } catch (e) {
    if (!isNotFound(e)) throw e;
    await jsm.streams.add(cfg);
  }
}

export function isNotFound(e: unknown): boolean {
  return /not found|404/i.test((e as Error)?.message ?? '');
}
