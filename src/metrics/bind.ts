// Bridge from the cluster's telemetry (src/telemetry/hub.ts: an EventEmitter the
// coordinator and the workers emit on, which knows nothing of Prometheus) to the metrics. One call:
//
//   bindTelemetry(metrics, coordinator.telemetry, { globalBatch: opts.batchSize, expectedWorkers: opts.gpus });
//   bindTelemetry(metrics, worker.telemetry);
//
// The shapes below are structural copies of what is used from the telemetry, so that src/metrics
// imports nothing from the cluster code and a change there fails to compile at the call site.
import type { Metrics } from './metrics.js';

/** A committed step as the coordinator reports it. */
export interface StepEvent {
  step: number;
  lossMean: number;
  stepMs: number;
  imagesPerSec: number;
}

/** A step as a worker did it. `images` (its shard size) is optional until the worker reports it. */
export interface WorkerStepEvent {
  step: number;
  lossMean: number;
  computeMs: number;
  allreduceMs: number;
  waitMs: number;
  images?: number;
}

export interface TelemetryLike {
  /** Read at every /readyz: the coordinator has started its run, the worker has joined. */
  ready: boolean;
  /** Running totals of NATS payload bytes (state transfers included), read at every scrape. */
  bytesSent: number;
  bytesReceived: number;
  on(event: 'step', listener: (r: StepEvent) => void): unknown;
  on(event: 'workerStep', listener: (r: WorkerStepEvent) => void): unknown;
  on(event: 'rejected', listener: (reason: string, detail: string) => void): unknown;
  on(event: 'abort', listener: (a: { step: number }) => void): unknown;
  on(event: 'checkpoint', listener: (c: { ms: number }) => void): unknown;
  on(event: 'members', listener: (m: { live: number }) => void): unknown;
  on(event: 'done', listener: () => void): unknown;
}

export interface BindOptions {
  /** Coordinator: images per step (the global batch), for the images counter. */
  globalBatch?: number;
  /** Coordinator: the workers the run waits for (--gpus). */
  expectedWorkers?: number;
}

export function bindTelemetry(metrics: Metrics, t: TelemetryLike, opts: BindOptions = {}): void {
  metrics.setReady(() => t.ready);
  if (opts.expectedWorkers !== undefined) {
    metrics.expectedWorkers.set(opts.expectedWorkers);
    metrics.runStarted();
  }
  metrics.followTransportTotals(() => ({ sent: t.bytesSent, received: t.bytesReceived }));

  const aborted = new Set<number>();
  t.on('step', (r) => {
    metrics.stepDone(r.step, r.lossMean, opts.globalBatch ?? 0, r.stepMs / 1000);
    metrics.trainImagesPerSecond.set(r.imagesPerSec);
    if (aborted.delete(r.step)) metrics.stepsRetried.inc();
  });
  t.on('workerStep', (r) => {
    const ms = r.computeMs + r.allreduceMs + r.waitMs;
    metrics.stepPhaseDuration.observe({ phase: 'compute' }, r.computeMs / 1000);
    metrics.stepPhaseDuration.observe({ phase: 'allreduce' }, r.allreduceMs / 1000);
    metrics.stepPhaseDuration.observe({ phase: 'wait' }, r.waitMs / 1000);
    metrics.stepDone(r.step, r.lossMean, r.images ?? 0, ms / 1000);
  });
  t.on('rejected', (reason) => metrics.messagesRejected.inc({ reason }));
  t.on('abort', (a) => {
    metrics.stepsAborted.inc();
    aborted.add(a.step);
  });
  t.on('checkpoint', (c) => {
    metrics.checkpointDuration.observe(c.ms / 1000);
    metrics.checkpointLastTimestamp.set(Date.now() / 1000);
  });
  t.on('members', (m) => metrics.liveWorkers.set(m.live));
  t.on('done', () => metrics.runFinished());
}
