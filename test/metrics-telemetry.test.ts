// The bridge from the cluster's Telemetry emitter to the metrics, against the real Telemetry class
// (a compile error here means the two have drifted apart).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Telemetry } from '../src/telemetry/hub.js';
import { bindTelemetry, createMetrics } from '../src/metrics/index.js';

const value = async (m: ReturnType<typeof createMetrics>, name: string, labels: Record<string, string> = {}) => {
  // Histogram series (_sum, _count, _bucket) are values of the base metric, named by metricName.
  const base = name.replace(/_(sum|count|bucket)$/, '');
  const metric = (await m.registry.getMetricsAsJSON()).find((x) => x.name === name || x.name === base);
  const v = metric?.values.find(
    (x) =>
      ((x as { metricName?: string }).metricName ?? metric.name) === name && Object.entries(labels).every(([k, l]) => x.labels[k] === l),
  );
  return v?.value;
};

test('coordinator telemetry drives the run metrics and readiness', async () => {
  const t = new Telemetry();
  const m = createMetrics({ role: 'coordinator', run: 'r' });
  bindTelemetry(m, t, { globalBatch: 128, expectedWorkers: 3 });
  assert.equal(m.isReady(), false);
  t.ready = true;
  assert.equal(m.isReady(), true);
  t.emit('members', { live: 3, workers: ['a', 'b', 'c'] });
  const step = { run: 'r', workers: 3, computeMs: 10, allreduceMs: 5, waitMs: 1, bytesSent: 0, bytesReceived: 0, transport: 'nats' };
  t.emit('step', { ...step, step: 1, lossMean: 2.5, stepMs: 50, imagesPerSec: 2560 });
  t.emit('abort', { step: 2, reason: 'worker c died' });
  t.emit('members', { live: 2, workers: ['a', 'b'] });
  t.emit('step', { ...step, step: 2, lossMean: 2.25, stepMs: 80, imagesPerSec: 1600 });
  t.reject('stale_epoch', 'old membership');
  t.emit('checkpoint', { step: 2, path: '/x', ms: 250, bytes: 1 });
  assert.equal(await value(m, 'scoreflow_train_loss'), 2.25);
  assert.equal(await value(m, 'scoreflow_train_step'), 2);
  assert.equal(await value(m, 'scoreflow_train_images_total'), 256);
  assert.equal(await value(m, 'scoreflow_train_images_per_second'), 1600);
  assert.equal(await value(m, 'scoreflow_train_steps_aborted_total'), 1);
  assert.equal(await value(m, 'scoreflow_train_steps_retried_total'), 1);
  assert.equal(await value(m, 'scoreflow_cluster_live_workers'), 2);
  assert.equal(await value(m, 'scoreflow_cluster_expected_workers'), 3);
  assert.equal(await value(m, 'scoreflow_messages_rejected_total', { reason: 'stale_epoch' }), 1);
  assert.equal(await value(m, 'scoreflow_checkpoint_duration_seconds_sum'), 0.25);
  assert.ok(Math.abs(Date.now() / 1000 - (await value(m, 'scoreflow_checkpoint_last_timestamp_seconds'))!) < 5);
  assert.equal(await value(m, 'scoreflow_train_active'), 1);
  t.emit('done', { ok: true, reason: 'finished', step: 2 });
  assert.equal(await value(m, 'scoreflow_train_active'), 0);
});

test('worker telemetry drives the phase split, loss and transport bytes', async () => {
  const t = new Telemetry();
  const m = createMetrics({ role: 'worker', run: 'r', worker: 'w0', device: '0' });
  bindTelemetry(m, t);
  const ack = { run: 'r', worker: 'w0', checksum: 0, error: '', bytesSent: 0, bytesReceived: 0 };
  t.emit('workerStep', { ...ack, step: 4, lossMean: 1.5, computeMs: 300, allreduceMs: 100, waitMs: 20, images: 16 });
  t.bytesSent += 4_000_000;
  t.bytesReceived += 3_000_000;
  assert.equal(await value(m, 'scoreflow_transport_sent_bytes_total'), 4_000_000);
  t.bytesSent += 1_000;
  assert.equal(await value(m, 'scoreflow_transport_sent_bytes_total'), 4_001_000);
  assert.equal(await value(m, 'scoreflow_transport_received_bytes_total'), 3_000_000);
  assert.equal(await value(m, 'scoreflow_train_step_phase_duration_seconds_sum', { phase: 'compute' }), 0.3);
  assert.equal(await value(m, 'scoreflow_train_step_phase_duration_seconds_sum', { phase: 'allreduce' }), 0.1);
  assert.equal(await value(m, 'scoreflow_train_step_phase_duration_seconds_sum', { phase: 'wait' }), 0.02);
  assert.equal(await value(m, 'scoreflow_train_loss'), 1.5);
  assert.equal(await value(m, 'scoreflow_train_step_duration_seconds_count'), 1);
});
