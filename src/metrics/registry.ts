// Every metric scoreflow exports, in one place, so that the dashboards, the alert rules and the
// deploy/README.md table can be checked against it (test/metrics.test.ts does).
//
// Conventions (https://prometheus.io/docs/practices/naming/): a `scoreflow_` prefix, base units in
// the name (seconds, bytes), `_total` on counters. Identity (run, role, worker, device) is attached
// as registry default labels, so callers never pass it and every series, the process metrics
// included, carries it.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, exponentialBuckets } from 'prom-client';

export type Role = 'coordinator' | 'worker';

/** Who this process is. `worker` and `device` are for workers; the coordinator leaves them out. */
export interface MetricsIdentity {
  role: Role;
  /** Run id; may be set later with `setLabels` (a worker learns it when it joins). */
  run?: string;
  /** Worker id (stable across restarts where possible: the pod name in Kubernetes). */
  worker?: string;
  /** Device index as a string ("0", "1", ...) or "cpu". */
  device?: string;
}

/** The phases a training step's wall time splits into, as seen by a worker. */
export const STEP_PHASES = ['compute', 'allreduce', 'wait'] as const;
export type StepPhase = (typeof STEP_PHASES)[number];

/** Reasons a message is dropped (the protocol's closed set); their counters start at 0. */
export { REJECT_REASONS, type RejectReason } from '../protocol/errors.js';
import { REJECT_REASONS } from '../protocol/errors.js';

export interface ScoreflowMetrics {
  registry: Registry;
  // training (the coordinator sets run-level values, workers their own shard's)
  trainLoss: Gauge;
  trainStep: Gauge;
  trainActive: Gauge;
  trainImages: Counter;
  trainImagesPerSecond: Gauge;
  stepDuration: Histogram;
  stepPhaseDuration: Histogram<'phase'>;
  stepsAborted: Counter;
  stepsRetried: Counter;
  // cluster and transport
  liveWorkers: Gauge;
  expectedWorkers: Gauge;
  bytesSent: Counter;
  bytesReceived: Counter;
  messagesRejected: Counter<'reason'>;
  // checkpoints (coordinator)
  checkpointDuration: Histogram;
  checkpointLastTimestamp: Gauge;
  // sampling and likelihood fan-out
  samplerImages: Counter;
  samplerFunctionEvaluations: Counter;
  likelihoodImages: Counter;
  likelihoodBitsPerDim: Gauge;
  jobQueueDepth: Gauge;
  // --eval-every (coordinator)
  evalBitsPerDim: Gauge;
  evalStep: Gauge;
  evalDuration: Gauge;
  /**
   * Make the byte counters follow running totals kept elsewhere (read at every scrape), instead of
   * being incremented directly. Use one way or the other, not both.
   */
  followTransportTotals(totals: () => { sent: number; received: number }): void;
}

/** Step times from 5 ms to about 80 s. */
const STEP_BUCKETS = exponentialBuckets(0.005, 2, 15);
/** Checkpoint writes from 50 ms to about 7 minutes. */
const CHECKPOINT_BUCKETS = exponentialBuckets(0.05, 2, 14);

/** The default labels for an identity: only the fields that are set. */
export function identityLabels(id: Partial<MetricsIdentity>): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const key of ['run', 'role', 'worker', 'device'] as const) {
    const value = id[key];
    if (value !== undefined && value !== '') labels[key] = value;
  }
  return labels;
}

/**
 * A fresh registry holding every scoreflow metric and the default process metrics
 * (`process_*`, `nodejs_*`). One per process; tests may build several.
 */
export function createRegistry(id: MetricsIdentity): ScoreflowMetrics {
  const registry = new Registry();
  registry.setDefaultLabels(identityLabels(id));
  collectDefaultMetrics({ register: registry });
  const registers = [registry];

  const counter = (name: string, help: string) => new Counter({ name, help, registers });
  let transportTotals: (() => { sent: number; received: number }) | undefined;
  const following = (name: string, help: string, pick: (t: { sent: number; received: number }) => number) => {
    let seen = 0;
    return new Counter({
      name,
      help,
      registers,
      collect() {
        const total = transportTotals ? pick(transportTotals()) : 0;
        if (total > seen) this.inc(total - seen);
        seen = Math.max(seen, total);
      },
    });
  };
  // A gauge whose 0 would be read as a value (a loss of 0, a checkpoint in 1970) stays absent
  // until it is first set, so that alerts on it do not fire on a process that just started.
  const gauge = (name: string, help: string, absentUntilSet = true) => {
    const g = new Gauge({ name, help, registers });
    if (absentUntilSet) g.remove();
    return g;
  };

  const stepPhaseDuration = new Histogram({
    name: 'scoreflow_train_step_phase_duration_seconds',
    help: 'Wall time of each phase of a training step on a worker: compute (gradients), allreduce (reduce-scatter and all-gather), wait (barriers, plans, acks)',
    labelNames: ['phase'],
    buckets: STEP_BUCKETS,
    registers,
  });
  for (const phase of STEP_PHASES) stepPhaseDuration.zero({ phase });

  const messagesRejected = new Counter({
    name: 'scoreflow_messages_rejected_total',
    help: 'Messages dropped without touching state, by reason (undecodable, version, other_run, unknown_worker, stale_epoch, bad_chunk, non_finite, ...)',
    labelNames: ['reason'],
    registers,
  });
  for (const reason of REJECT_REASONS) messagesRejected.inc({ reason }, 0);

  return {
    registry,
    trainLoss: gauge(
      'scoreflow_train_loss',
      'Denoising score matching loss of the last step (coordinator: global batch mean; worker: its shard)',
    ),
    trainStep: gauge('scoreflow_train_step', 'Index of the last training step applied'),
    trainActive: gauge('scoreflow_train_active', '1 while a training run is in progress, 0 when idle or finished', false),
    trainImages: counter('scoreflow_train_images_total', 'Training images processed (coordinator: global batches; worker: its shards)'),
    trainImagesPerSecond: gauge('scoreflow_train_images_per_second', 'Training throughput over the last step(s)'),
    stepDuration: new Histogram({
      name: 'scoreflow_train_step_duration_seconds',
      help: 'Wall time of a training step, from plan to the last ack (coordinator) or from plan to update applied (worker)',
      buckets: STEP_BUCKETS,
      registers,
    }),
    stepPhaseDuration,
    stepsAborted: counter('scoreflow_train_steps_aborted_total', 'Training steps aborted (a worker died or left mid-step)'),
    stepsRetried: counter('scoreflow_train_steps_retried_total', 'Training steps re-planned over a new membership after an abort'),
    liveWorkers: gauge('scoreflow_cluster_live_workers', 'Workers currently in the run membership', false),
    expectedWorkers: gauge('scoreflow_cluster_expected_workers', 'Workers the run was started for (--gpus)', false),
    bytesSent: following('scoreflow_transport_sent_bytes_total', 'Payload bytes published to NATS', (t) => t.sent),
    bytesReceived: following('scoreflow_transport_received_bytes_total', 'Payload bytes received from NATS', (t) => t.received),
    messagesRejected,
    checkpointDuration: new Histogram({
      name: 'scoreflow_checkpoint_duration_seconds',
      help: 'Time to gather the training state and write a checkpoint atomically',
      buckets: CHECKPOINT_BUCKETS,
      registers,
    }),
    checkpointLastTimestamp: gauge(
      'scoreflow_checkpoint_last_timestamp_seconds',
      'Unix time of the last checkpoint written (at run start: of the checkpoint resumed from, or the start time)',
    ),
    samplerImages: counter('scoreflow_sampler_images_total', 'Samples generated'),
    samplerFunctionEvaluations: counter(
      'scoreflow_sampler_function_evaluations_total',
      'Score network evaluations by samplers, counted per image (a call on a batch of B images counts B), so that its rate over scoreflow_sampler_images_total is the NFE per sample',
    ),
    likelihoodImages: counter('scoreflow_likelihood_images_total', 'Images whose bits/dim has been evaluated'),
    likelihoodBitsPerDim: gauge('scoreflow_likelihood_bits_per_dim', 'Running mean bits/dim over the images evaluated so far'),
    jobQueueDepth: gauge('scoreflow_jobs_queue_depth', 'Sampling/likelihood jobs waiting in the JetStream work queue', false),
    evalBitsPerDim: gauge(
      'scoreflow_eval_bits_per_dim',
      'Bits/dim of the fixed held-out test images at the last --eval-every evaluation (EMA weights, seed 0)',
    ),
    evalStep: gauge('scoreflow_eval_step', 'Training step of the checkpoint the last --eval-every evaluation scored'),
    evalDuration: gauge('scoreflow_eval_duration_seconds', 'Wall time of the last --eval-every evaluation (bits/dim and sample grid)'),
    followTransportTotals: (totals) => {
      transportTotals = totals;
    },
  };
}
