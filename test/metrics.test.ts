// The metrics endpoint and the metric names: conventions, and that the dashboards, the alert rules
// and deploy/README.md name only (and, for the README, all) metrics that the code exports.
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { readFileSync } from 'node:fs';
import { after, describe, test } from 'node:test';
import { createMetrics, findFreePort, type Metrics } from '../src/metrics/index.js';
import { deployQueries, loadDashboards, metricNames, unknownMetrics } from '../src/metrics/queries.js';
import { packagePath } from '../src/core/paths.js';

async function get(port: number, path: string, method = 'GET') {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { method });
  return { status: res.status, type: res.headers.get('content-type') ?? '', body: await res.text() };
}

describe('metrics endpoint', () => {
  const metrics = createMetrics({ role: 'worker', run: 'r1', worker: 'w0', device: '0' });
  const serving = metrics.serve(0, { host: '127.0.0.1' });
  after(async () => (await serving).close());

  test('serves /metrics with identity labels, /healthz, and /readyz following setReady', async () => {
    const { port } = await serving;
    assert.ok(port > 0);
    metrics.stepDone(7, 0.5, 64, 0.25);
    metrics.stepPhaseDuration.observe({ phase: 'allreduce' }, 0.01);
    const m = await get(port, '/metrics');
    assert.equal(m.status, 200);
    assert.match(m.type, /^text\/plain; version=0\.0\.4/);
    assert.match(m.body, /^scoreflow_train_loss\{run="r1",role="worker",worker="w0",device="0"\} 0\.5$/m);
    assert.match(m.body, /^scoreflow_train_images_per_second\{[^}]*\} 256$/m);
    assert.match(m.body, /^scoreflow_train_step_phase_duration_seconds_count\{[^}]*phase="allreduce"\} 1$/m);
    assert.match(m.body, /^scoreflow_messages_rejected_total\{[^}]*reason="stale_epoch"[^}]*\} 0$/m);
    assert.match(m.body, /^process_cpu_seconds_total\{run="r1",role="worker",worker="w0",device="0"\} /m);

    assert.deepEqual(await get(port, '/healthz').then((r) => r.status), 200);
    assert.equal((await get(port, '/readyz')).status, 503);
    metrics.setReady(true);
    assert.equal((await get(port, '/readyz')).status, 200);
    assert.equal((await get(port, '/readyz', 'HEAD')).body, '');
    metrics.setReady(false);
    assert.equal((await get(port, '/readyz')).status, 503);
    assert.equal((await get(port, '/nope')).status, 404);
    assert.equal((await get(port, '/metrics', 'POST')).status, 405);
  });

  test('setLabels relabels every series (a worker that learns its run)', async () => {
    metrics.setLabels({ run: 'r2' });
    const text = await metrics.registry.metrics();
    assert.match(text, /^scoreflow_train_loss\{run="r2",role="worker",worker="w0",device="0"\} 0\.5$/m);
    assert.doesNotMatch(text, /run="r1"/);
  });
});

describe('ports', () => {
  test('a taken port makes serve fail with a clear message, or move on when given tries', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const taken = (blocker.address() as { port: number }).port;
    try {
      const m = createMetrics({ role: 'worker', run: 'r' });
      await assert.rejects(m.serve(taken, { host: '127.0.0.1' }), /cannot listen on port \d+.*--metrics-port/);
      const s = await m.serve(taken, { host: '127.0.0.1', tries: 20 });
      assert.ok(s.port > taken && s.port < taken + 20);
      const free = await findFreePort(taken, { host: '127.0.0.1' });
      assert.notEqual(free, taken);
      await s.close();
    } finally {
      blocker.close();
    }
  });
});

describe('metric names', () => {
  const coordinator = createMetrics({ role: 'coordinator', run: 'r' });

  test('follow the Prometheus conventions', async () => {
    const json = await coordinator.registry.getMetricsAsJSON();
    const ours = json.filter((m) => m.name.startsWith('scoreflow_'));
    assert.ok(ours.length >= 20, `only ${ours.length} scoreflow metrics`);
    for (const m of ours) {
      assert.match(m.name, /^scoreflow_[a-z][a-z0-9_]*$/, m.name);
      const type = String(m.type);
      if (type === 'counter') assert.match(m.name, /_total$/, `counter ${m.name} must end in _total`);
      else assert.doesNotMatch(m.name, /_total$/, `${type} ${m.name} must not end in _total`);
      if (type === 'histogram') assert.match(m.name, /_(seconds|bytes)$/, `histogram ${m.name} needs a base unit`);
      assert.doesNotMatch(m.name, /_(ms|milliseconds|kb|mb|minutes)(_|$)/, `${m.name}: use base units`);
      assert.ok(m.help.length > 10, `${m.name} needs a help text`);
    }
  });

  test('gauges that would mislead at 0 are absent until set; counters start at 0', async () => {
    const fresh = createMetrics({ role: 'coordinator', run: 'fresh' });
    const text = await fresh.registry.metrics();
    for (const name of ['scoreflow_train_loss', 'scoreflow_checkpoint_last_timestamp_seconds', 'scoreflow_likelihood_bits_per_dim']) {
      assert.doesNotMatch(text, new RegExp(`^${name}\\{`, 'm'), `${name} should have no series yet`);
    }
    assert.match(text, /^scoreflow_train_steps_aborted_total\{run="fresh",role="coordinator"\} 0$/m);
    fresh.runStarted(10, 1_700_000_000);
    assert.match(await fresh.registry.metrics(), /^scoreflow_checkpoint_last_timestamp_seconds\{[^}]*\} 1700000000$/m);
  });

  test('every dashboard query, alert rule and README row names an exported metric, and the README lists them all', async () => {
    const exported = await exportedNames([coordinator, createMetrics({ role: 'worker', run: 'r', worker: 'w', device: '0' })]);
    const dashboards = loadDashboards();
    assert.equal(dashboards.length, 3, 'training, cluster health, sampling/likelihood');
    for (const { file, dashboard, panels } of dashboards) {
      assert.ok(dashboard.uid && dashboard.title, `${file}: uid and title`);
      assert.ok(panels.length >= 6, `${file}: only ${panels.length} panels`);
    }
    const { problems, used } = unknownMetrics(deployQueries(), exported);
    assert.deepEqual(problems, []);
    // Every scoreflow metric is on some dashboard or alert.
    for (const n of exported) if (n.startsWith('scoreflow_')) assert.ok(used.has(n), `${n} appears on no dashboard or alert`);

    const readme = readFileSync(packagePath('deploy', 'README.md'), 'utf8');
    const rows = new Set([...readme.matchAll(/^\| `(scoreflow_[a-z0-9_]+)` \|/gm)].map((m) => m[1]));
    const ours = new Set([...exported].filter((n) => n.startsWith('scoreflow_')));
    assert.deepEqual([...rows].sort(), [...ours].sort(), 'deploy/README.md metric table vs the registry');
  });

  test('the metric-name extractor reads PromQL as expected', () => {
    assert.deepEqual(
      metricNames(
        'histogram_quantile(0.9, sum by (run, le) (rate(a_bucket{x="y",run=~"$run"}[$__rate_interval]))) / ignoring(phase) group_left b',
      ),
      ['a_bucket', 'b'],
    );
    assert.deepEqual(metricNames('time() - c{role="coordinator"} > 3600 and d == 1'), ['c', 'd']);
    assert.deepEqual(metricNames('label_values(e, run)'), ['e']);
    assert.deepEqual(metricNames('(f != f) or (abs(f) == +Inf) unless on (run) g offset 5m'), ['f', 'g']);
  });
});

async function exportedNames(all: Metrics[]): Promise<Set<string>> {
  const names = new Set<string>();
  for (const m of all) for (const j of await m.registry.getMetricsAsJSON()) names.add(j.name);
  return names;
}
