// What deploy/ asks of the metrics: every PromQL query in the Grafana dashboards (panels and
// template variables) and the alert rules, and the metric names in them. The tests hold these
// against the registry and against the /metrics text of running processes, so that a renamed
// metric cannot leave a dashboard panel silently empty.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { packagePath } from '../core/paths.js';

export interface DeployQuery {
  /** e.g. `training.json panel "Loss"`, `alert ScoreflowWorkerLost`. */
  where: string;
  expr: string;
}

interface Dashboard {
  uid?: string;
  title?: string;
  templating?: { list: { name: string; type: string; query?: string | { query?: string } }[] };
  panels?: Panel[];
}
interface Panel {
  title: string;
  panels?: Panel[];
  targets?: { expr: string }[];
}

/** The dashboards in deploy/grafana/dashboards, by file name. */
export function loadDashboards(
  dir = packagePath('deploy', 'grafana', 'dashboards'),
): { file: string; dashboard: Dashboard; panels: Panel[] }[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((file) => {
      const dashboard = JSON.parse(readFileSync(join(dir, file), 'utf8')) as Dashboard;
      return { file, dashboard, panels: (dashboard.panels ?? []).flatMap((p) => [p, ...(p.panels ?? [])]) };
    });
}

/** Every dashboard query (panel targets and query variables) and every alert rule expression. */
export function deployQueries(): DeployQuery[] {
  const queries: DeployQuery[] = [];
  for (const { file, dashboard, panels } of loadDashboards()) {
    for (const v of dashboard.templating?.list ?? []) {
      const q = typeof v.query === 'string' ? v.query : v.query?.query;
      if (v.type === 'query' && q) queries.push({ where: `${file} variable ${v.name}`, expr: q });
    }
    for (const p of panels) for (const t of p.targets ?? []) queries.push({ where: `${file} panel "${p.title}"`, expr: t.expr });
  }
  const rules = parse(readFileSync(packagePath('deploy', 'prometheus', 'alerts.yml'), 'utf8')) as {
    groups: { rules: { alert: string; expr: string }[] }[];
  };
  for (const r of rules.groups.flatMap((g) => g.rules)) queries.push({ where: `alert ${r.alert}`, expr: r.expr });
  return queries;
}

/** Series Prometheus makes itself: nobody exports them. */
export const SYNTHETIC_SERIES: ReadonlySet<string> = new Set(['up']);

/** The metric a histogram series belongs to (`x_bucket`, `x_sum`, `x_count` → `x`). */
export function stripHistogramSuffix(name: string): string {
  return name.replace(/_(bucket|sum|count)$/, '');
}

/**
 * Metric names in a Prometheus text exposition (what /metrics serves): those declared by
 * `# TYPE` (a gauge with no series yet included) and those of the samples.
 */
export function exposedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const m = /^# TYPE ([a-zA-Z_:][\w:]*) /.exec(line) ?? /^([a-zA-Z_:][\w:]*)[{ ]/.exec(line);
    if (m) names.add(m[1]);
  }
  return names;
}

const PROMQL_KEYWORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'and',
  'or',
  'unless',
  'bool',
  'offset',
  'inf',
  'nan',
  'atan2',
]);

/**
 * Metric names in a PromQL expression (or a Grafana `label_values(metric, label)` query), in order
 * of first appearance: every identifier that is not a function call, a keyword, a label inside
 * braces or a grouping clause, a Grafana variable, a string or a number.
 */
export function metricNames(expr: string): string[] {
  let e = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""') // strings
    .replace(/\$\{[^}]*\}|\$\w+/g, ' ') // Grafana variables ($run, ${run}, $__rate_interval)
    .replace(/\{[^}]*\}/g, ' ') // label matchers
    .replace(/\[[^\]]*\]/g, ' ') // range and subquery selectors
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ') // label lists
    .replace(/\blabel_values\s*\(\s*([a-zA-Z_:][\w:]*)\s*,[^)]*\)/g, ' $1 '); // Grafana label_values(metric, label)
  e = e.replace(/\b\d+(\.\d+)?([eE][+-]?\d+)?\b|\b\d+[smhdwy]\b/g, ' ');
  const names: string[] = [];
  for (const m of e.matchAll(/[a-zA-Z_:][\w:]*(?=\s*(\()?)/g)) {
    const [word, call] = [m[0], m[1]];
    if (call || PROMQL_KEYWORDS.has(word.toLowerCase())) continue;
    if (!names.includes(word)) names.push(word);
  }
  return names;
}

/**
 * The queries that name a metric outside `exported` (histogram series counted as their metric;
 * `up` as Prometheus's own), one line each; and the scoreflow metrics that some query uses.
 */
export function unknownMetrics(queries: DeployQuery[], exported: ReadonlySet<string>): { problems: string[]; used: Set<string> } {
  const known = (n: string) => exported.has(n) || SYNTHETIC_SERIES.has(n) || exported.has(stripHistogramSuffix(n));
  const problems: string[] = [];
  const used = new Set<string>();
  for (const { where, expr } of queries) {
    const names = metricNames(expr);
    if (names.length === 0) problems.push(`${where}: no metric found in ${expr}`);
    for (const n of names) {
      if (!known(n)) problems.push(`${where} queries ${n}, which the code does not export (${expr})`);
      used.add(stripHistogramSuffix(n));
    }
  }
  return { problems, used };
}
