// What the coordinator and the workers call:
//
//   const metrics = createMetrics({ role: 'worker', run, worker: id, device: '0' });
//   const { port } = await metrics.serve(opts.metricsPort, { tries: 100 });   // log the port
//   metrics.setReady(true);                                                   // after joining
//   metrics.stepPhaseDuration.observe({ phase: 'compute' }, seconds);
//
// The metric objects are plain prom-client ones; see registry.ts for the list and deploy/README.md
// for the table of names.
export { DEFAULT_METRICS_PORT, findFreePort, nextFreePorts, serveMetrics, type MetricsServer, type ServeOptions } from './server.js';
export { bindTelemetry, type BindOptions, type TelemetryLike } from './bind.js';
export { createMetrics, type Metrics } from './metrics.js';
export {
  REJECT_REASONS,
  STEP_PHASES,
  createRegistry,
  type MetricsIdentity,
  type RejectReason,
  type Role,
  type ScoreflowMetrics,
  type StepPhase,
} from './registry.js';
