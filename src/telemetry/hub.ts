/**
 * The hook point for metrics: coordinator and workers count what happens here and emit
 * events; src/metrics (prom-client) subscribes. Nothing in here knows about Prometheus.
 */
import { EventEmitter } from 'node:events';
import type { RejectReason } from '../protocol/envelope.js';

/** One committed step, as the coordinator saw it (worker figures are the slowest worker's). */
export interface StepReport {
  run: string;
  step: number;
  lossMean: number;
  workers: number;
  stepMs: number;
  computeMs: number;
  allreduceMs: number;
  waitMs: number;
  bytesSent: number;
  bytesReceived: number;
  imagesPerSec: number;
  /** How the step's gradients moved (nats, gloo, nccl). */
  transport: string;
}

/** One step as a worker did it. */
export interface WorkerStepReport {
  run: string;
  worker: string;
  step: number;
  computeMs: number;
  allreduceMs: number;
  waitMs: number;
  bytesSent: number;
  bytesReceived: number;
  lossMean: number;
  /** Samples in this worker's shard. */
  images: number;
}

export interface TelemetryEvents {
  step: [StepReport];
  workerStep: [WorkerStepReport];
  rejected: [reason: RejectReason, detail: string];
  abort: [{ step: number; reason: string }];
  checkpoint: [{ step: number; path: string; ms: number; bytes: number }];
  members: [{ live: number; workers: string[] }];
  done: [{ ok: boolean; reason: string; step: number }];
}

export class Telemetry extends EventEmitter<TelemetryEvents> {
  readonly rejected = new Map<RejectReason, number>();
  stepsCommitted = 0;
  stepsAborted = 0;
  bytesSent = 0;
  bytesReceived = 0;
  lastCheckpointAt = 0;
  liveWorkers = 0;
  ready = false;

  constructor(private readonly log: (line: string) => void = () => {}) {
    super();
  }

  /** Counts a rejected message; logs the first few of each reason, then every 100th. */
  reject(reason: RejectReason, detail: string): void {
    const n = (this.rejected.get(reason) ?? 0) + 1;
    this.rejected.set(reason, n);
    if (n <= 5 || n % 100 === 0) this.log(`rejected message (${reason}, #${n}): ${detail}`);
    this.emit('rejected', reason, detail);
  }

  rejectedTotal(): number {
    let s = 0;
    for (const v of this.rejected.values()) s += v;
    return s;
  }
}
