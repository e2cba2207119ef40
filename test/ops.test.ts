// Prometheus side of deploy/: promtool checks the scrape configs and the rules and runs the rules'
// unit tests. (A real Prometheus server scraping a running cluster: test/ops-cluster.test.ts.)
// Needs the Debian package `prometheus`.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { parse, parseAllDocuments } from 'yaml';
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
    const docs = parseAllDocuments(readFileSync(packagePath('deploy', 'k8s', 'base', 'monitoring.yaml'), 'utf8')).map(
      (d) => d.toJS() as { kind: string; spec: unknown },
    );
    const rule = docs.find((d) => d.kind === 'PrometheusRule');
    assert.ok(rule, 'no PrometheusRule in deploy/k8s/base/monitoring.yaml');
    assert.deepEqual(rule.spec, alerts, 'regenerate the PrometheusRule from deploy/prometheus/alerts.yml');
  });
});
