// Prometheus side of deploy/: promtool checks the scrape configs and the rules and runs the rules'
// unit tests, and a real Prometheus server scrapes a scoreflow metrics endpoint and answers a
// PromQL query for the training loss. Needs the Debian package `prometheus`.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import { parse, parseAllDocuments } from 'yaml';
import { createMetrics, findFreePort } from '../src/metrics/index.js';
import { packagePath } from '../src/core/paths.js';

const promDir = packagePath('deploy', 'prometheus');

function tool(name: string): string {
  const found = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).stdout.trim();
  assert.ok(found, `${name} not found: apt-get install prometheus`);
  return found;
}

function promtool(...args: string[]): string {
  const r = spawnSync(tool('promtool'), args, { cwd: promDir, encoding: 'utf8' });
  assert.equal(r.status, 0, `promtool ${args.join(' ')} failed:\n${r.stdout}${r.stderr}`);
  return r.stdout + r.stderr;
}

describe('promtool', () => {
  test('the scrape configurations are valid', () => {
    for (const file of ['prometheus.yml', 'prometheus-k8s.yml']) assert.match(promtool('check', 'config', file), /SUCCESS/);
  });

  test('the alert rules are valid and each one fires on its synthetic series', () => {
    assert.match(promtool('check', 'rules', 'alerts.yml'), /SUCCESS: 7 rules found/);
    assert.match(promtool('test', 'rules', 'alerts.test.yml'), /SUCCESS/);
    // Every alert has at least one test in which it is expected to fire.
    const rules = parse(readFileSync(join(promDir, 'alerts.yml'), 'utf8')) as { groups: { rules: { alert: string }[] }[] };
    const tests = parse(readFileSync(join(promDir, 'alerts.test.yml'), 'utf8')) as {
      tests: { alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[];
    };
    const fired = new Set(tests.tests.flatMap((t) => t.alert_rule_test.filter((a) => a.exp_alerts.length > 0).map((a) => a.alertname)));
    for (const r of rules.groups.flatMap((g) => g.rules)) assert.ok(fired.has(r.alert), `no test shows ${r.alert} firing`);
  });

  test('the PrometheusRule in deploy/k8s holds the same rules as alerts.yml', () => {
    const alerts = parse(readFileSync(join(promDir, 'alerts.yml'), 'utf8')) as unknown;
    const docs = parseAllDocuments(readFileSync(packagePath('deploy', 'k8s', 'base', 'monitoring.yaml'), 'utf8')).map((d) => d.toJS() as { kind: string; spec: unknown });
    const rule = docs.find((d) => d.kind === 'PrometheusRule');
    assert.ok(rule, 'no PrometheusRule in deploy/k8s/base/monitoring.yaml');
    assert.deepEqual(rule.spec, alerts, 'regenerate the PrometheusRule from deploy/prometheus/alerts.yml');
  });
});

describe('a real Prometheus server', () => {
  test('scrapes a metrics endpoint and a PromQL query returns the training loss', { timeout: 30_000 }, async () => {
    const prometheus = tool('prometheus');
    // For now a metrics endpoint served from this process through the same API the coordinator
    // uses; a coordinator process can take its place once the cluster command exists.
    const metrics = createMetrics({ role: 'coordinator', run: 'it' });
    metrics.runStarted(0);
    metrics.stepDone(1, 0.8125, 128, 0.5);
    const target = await metrics.serve(0, { host: '127.0.0.1' });
    const webPort = await findFreePort(0, { host: '127.0.0.1' });
    const dir = mkdtempSync(join(tmpdir(), 'scoreflow-prom-'));
    writeFileSync(
      join(dir, 'prometheus.yml'),
      [
        'global: {scrape_interval: 1s, evaluation_interval: 1s}',
        `rule_files: [${JSON.stringify(join(promDir, 'alerts.yml'))}]`,
        'scrape_configs:',
        '  - job_name: scoreflow-coordinator',
        `    static_configs: [{targets: ["127.0.0.1:${target.port}"]}]`,
      ].join('\n') + '\n',
    );
    let log = '';
    const server = spawn(
      prometheus,
      [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${webPort}`, '--log.level=warn'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    server.stderr.on('data', (b: Buffer) => (log = (log + b.toString()).slice(-4000)));
    const exited = once(server, 'exit');
    const api = async (path: string) => {
      const res = await fetch(`http://127.0.0.1:${webPort}${path}`);
      return (await res.json()) as { status: string; data: { result: { metric: Record<string, string>; value: [number, string] }[]; groups: { rules: unknown[] }[] } };
    };
    try {
      const query = encodeURIComponent('scoreflow_train_loss{job="scoreflow-coordinator",run="it",role="coordinator"}');
      let result: { metric: Record<string, string>; value: [number, string] }[] = [];
      const deadline = Date.now() + 20_000;
      while (result.length === 0) {
        assert.ok(Date.now() < deadline, `no loss from Prometheus within 20 s; its log:\n${log}`);
        assert.equal(server.exitCode, null, `prometheus exited: ${log}`);
        await new Promise((r) => setTimeout(r, 250));
        result = await api(`/api/v1/query?query=${query}`).then((r) => r.data.result, () => []);
      }
      assert.equal(result.length, 1);
      assert.equal(Number(result[0].value[1]), 0.8125);
      assert.equal(result[0].metric.instance, `127.0.0.1:${target.port}`);
      // The server loaded the alert rules too.
      const rules = await api('/api/v1/rules');
      assert.equal(rules.data.groups.flatMap((g) => g.rules).length, 7);
    } finally {
      server.kill('SIGTERM');
      await exited;
      await target.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

