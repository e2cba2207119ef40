// A process's metrics: the registry's series plus readiness, identity labels, the HTTP endpoint
// and the run/step bookkeeping that the coordinator and the workers call (index.ts shows how).
import { createRegistry, identityLabels, type MetricsIdentity, type ScoreflowMetrics } from './registry.js';
import { serveMetrics, type MetricsServer, type ServeOptions } from './server.js';

export interface Metrics extends ScoreflowMetrics {
  /**
   * What /readyz answers: 200 when true, 503 when false (the initial state). A function is asked
   * at every probe (e.g. `() => telemetry.ready`).
   */
  setReady(ready: boolean | (() => boolean)): void;
  isReady(): boolean;
  /** Change the identity labels on every series (e.g. a worker that learns its run on joining). */
  setLabels(id: Partial<Omit<MetricsIdentity, 'role'>>): void;
  /** Start the HTTP endpoint; resolves with the bound port. */
  serve(port: number, opts?: ServeOptions): Promise<MetricsServer>;
  /**
   * Mark a training run started (active = 1, step, and the checkpoint clock started at the time
   * of the checkpoint resumed from, or now) or finished (active = 0).
   */
  runStarted(step?: number, resumedCheckpointUnixSeconds?: number): void;
  runFinished(): void;
  /** Record one applied training step (global figures at the coordinator, shard ones at a worker). */
  stepDone(step: number, loss: number, images: number, seconds: number): void;
}

export function createMetrics(id: MetricsIdentity): Metrics {
  const m = createRegistry(id);
  let ready: boolean | (() => boolean) = false;
  const isReady = () => (typeof ready === 'function' ? ready() : ready);
  let identity: MetricsIdentity = { ...id };
  return {
    ...m,
    setReady: (value) => {
      ready = value;
    },
    isReady,
    setLabels: (labels) => {
      identity = { ...identity, ...labels, role: identity.role };
      m.registry.setDefaultLabels(identityLabels(identity));
    },
    serve: (port, opts) => serveMetrics({ registry: m.registry, isReady }, port, opts),
    runStarted: (step = 0, resumed) => {
      m.trainActive.set(1);
      m.trainStep.set(step);
      // Only the coordinator writes checkpoints; a worker's clock would only confuse the age alert.
      if (identity.role === 'coordinator') m.checkpointLastTimestamp.set(resumed ?? Date.now() / 1000);
    },
    runFinished: () => m.trainActive.set(0),
    stepDone: (step, loss, images, seconds) => {
      m.trainStep.set(step);
      m.trainLoss.set(loss);
      m.trainImages.inc(images);
      m.stepDuration.observe(seconds);
      if (seconds > 0 && images > 0) m.trainImagesPerSecond.set(images / seconds);
    },
  };
}
