// deploy/ against a live cluster as users run it: `coordinator start --gpus 2` (a tiny model on
// wasm) with the workers it spawns and its own nats-server, metrics on free ports. A real Prometheus
// (Debian package) scrapes the three of them with a scrape configuration written from the ports the
// coordinator logs, and PromQL returns the loss, the live workers and the workers' series; the
// processes' own /metrics text names every metric the dashboards and alert rules query; /readyz
// answers 200 once the workers have joined. A short second run checks that a coordinator serving
// metrics exits by itself when its run is done.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { packagePath } from '../src/core/paths.js';
import { findFreePort } from '../src/metrics/index.js';
import { deployQueries, exposedNames, unknownMetrics } from '../src/metrics/queries.js';
import { TINY_NET } from './helpers/cli.js';
import { poll } from './helpers/procs.js';

const RUN = 'opsit';
const promDir = packagePath('deploy', 'prometheus');
const which = (name: string) => spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).stdout.trim();
const prometheusBin = which('prometheus');

interface Proc {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

function startProc(file: string, args: string[]): Proc {
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (b: Buffer) => (out = (out + b.toString()).slice(-200_000));
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, output: () => out, exited };
}

const alive = (p: Proc) => p.child.exitCode === null && p.child.signalCode === null;

/** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code (null when killed). */
async function stop(p: Proc, graceMs: number): Promise<number | null> {
  if (!alive(p)) return p.exited;
  p.child.kill('SIGTERM');
  const t = setTimeout(() => p.child.kill('SIGKILL'), graceMs);
  try {
    return await p.exited;
  } finally {
    clearTimeout(t);
  }
}

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(5000) });
  return { status: res.status, body: await res.text() };
}

/** Pids of the workers the coordinator says joined. */
const workerPids = (out: string) => [...out.matchAll(/^coordinator: worker \S+ joined \(\S+ pid (\d+)/gm)].map((m) => Number(m[1]));

const pidAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('a live coordinator start --gpus 2 with its workers', { timeout: 300_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'scoreflow-ops-'));
  let coordinator: Proc;
  let prometheus: Proc | undefined;
  let blocker: Server | undefined;
  let blocked = 0;
  let base = 0;
  let ports: { coordinator: number; workers: Map<string, number> };
  let webPort = 0;
  /** A second, short run: a coordinator serving metrics must exit when its run is done. */
  let short: Proc;

  before(async () => {
    // A free base port for the coordinator, and the one above it taken, so that the workers have
    // to skip it: they get the next free ports, distinct from each other and from the coordinator's.
    base = await findFreePort(20_000 + Math.floor(Math.random() * 20_000));
    blocker = createServer();
    blocked = base + 1;
    await new Promise<void>((resolve) => {
      blocker!.once('error', () => resolve()); // already taken by someone else: as good
      blocker!.listen(blocked, () => resolve());
    });
    coordinator = startProc(process.execPath, [
      packagePath('bin', 'coordinator.js'),
      'start',
      '--gpus',
      '2',
      '--run',
      RUN,
      '--out',
      join(dir, 'run'),
      ...TINY_NET,
      '--limit',
      '256',
      '--batch-size',
      '16',
      '--backend',
      'wasm',
      // Far more steps than the test needs: it stops the run with SIGTERM once it has seen it all.
      '--steps',
      '100000',
      '--ckpt-every',
      '20',
      '--heartbeat-timeout',
      '20000',
      '--metrics-port',
      String(base),
    ]);
    short = startProc(process.execPath, [
      packagePath('bin', 'coordinator.js'),
      'start',
      '--gpus',
      '1',
      '--run',
      'opsshort',
      '--out',
      join(dir, 'short'),
      '--synthetic',
      JSON.stringify({ params: 1000, computeMs: 1 }),
      '--batch-size',
      '4',
      '--steps',
      '3',
      '--backend',
      'cpu',
      '--metrics-port',
      '0',
    ]);

    // The ports, as the coordinator logs them.
    ports = await poll(
      () => `the coordinator to log its and 2 workers' metrics ports; its output:\n${coordinator.output()}`,
      90_000,
      () => {
        assert.ok(alive(coordinator), `the coordinator exited (${coordinator.child.exitCode}):\n${coordinator.output()}`);
        const out = coordinator.output();
        const own = /^coordinator: metrics on :(\d+)\/metrics$/m.exec(out);
        const workers = new Map(
          [...out.matchAll(/^coordinator: worker (\S+) metrics on :(\d+)\/metrics$/gm)].map((m) => [m[1], Number(m[2])]),
        );
        return own && workers.size === 2 ? { coordinator: Number(own[1]), workers } : undefined;
      },
    );

    webPort = await findFreePort(0, { host: '127.0.0.1' });
    const target = (p: number) => JSON.stringify(`127.0.0.1:${p}`);
    writeFileSync(
      join(dir, 'prometheus.yml'),
      [
        'global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}',
        `rule_files: [${JSON.stringify(join(promDir, 'alerts.yml'))}]`,
        'scrape_configs:',
        '  - job_name: scoreflow-coordinator',
        `    static_configs: [{targets: [${target(ports.coordinator)}]}]`,
        '  - job_name: scoreflow-worker',
        `    static_configs: [{targets: [${[...ports.workers.values()].map(target).join(', ')}]}]`,
      ].join('\n') + '\n',
    );
    assert.ok(prometheusBin, 'prometheus not installed (apt-get install prometheus)');
    prometheus = startProc(prometheusBin, [
      `--config.file=${join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(dir, 'prometheus-data')}`,
      `--web.listen-address=127.0.0.1:${webPort}`,
      '--log.level=warn',
    ]);
  });

  after(async () => {
    const pids = workerPids(coordinator?.output() ?? '');
    const [, coord] = await Promise.all([
      prometheus && stop(prometheus, 10_000),
      coordinator && stop(coordinator, 30_000),
      short && stop(short, 5_000),
    ]);
    blocker?.close();
    // The coordinator takes its workers down with it (SIGTERM stops the run: exit status 1).
    const left = pids.filter(pidAlive);
    for (const pid of left) process.kill(pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(left, [], 'worker processes left behind by the coordinator');
    assert.notEqual(coord, null, `the coordinator had to be SIGKILLed:\n${coordinator?.output().slice(-4000)}`);
  });

  test("the coordinator logs each worker's metrics port: the next free ports above its own, none shared", () => {
    const all = [ports.coordinator, ...ports.workers.values()];
    assert.equal(new Set(all).size, 3, `ports ${all.join(', ')}`);
    // (The coordinator's port is `base` unless another process took it meanwhile: then the next free one.)
    assert.ok(ports.coordinator >= base && ports.coordinator < base + 100, `coordinator on :${ports.coordinator}, asked for :${base}`);
    assert.deepEqual([...ports.workers.keys()].sort(), [`${RUN}-w0`, `${RUN}-w1`]);
    const [w0, w1] = [ports.workers.get(`${RUN}-w0`)!, ports.workers.get(`${RUN}-w1`)!];
    assert.ok(
      w0 > ports.coordinator && w1 > w0 && ![w0, w1].includes(blocked),
      `workers on :${w0}, :${w1}: above the coordinator's :${ports.coordinator}, not the taken :${blocked}, in order`,
    );
  });

  test("the processes' /metrics name every metric the dashboards and alert rules query; /readyz is 200 once the workers joined", async () => {
    const targets = [['coordinator', ports.coordinator], ...ports.workers] as [string, number][];
    // Scrape until the workers have joined and trained: live workers = 2 and each worker has a loss.
    const texts = await poll(
      () => `a trained step on both workers and 2 live workers; coordinator output:\n${coordinator.output().slice(-4000)}`,
      90_000,
      async () => {
        assert.ok(alive(coordinator), `the coordinator exited:\n${coordinator.output()}`);
        const t = await Promise.all(targets.map(async ([, port]) => (await get(port, '/metrics')).body));
        const ready =
          /^scoreflow_cluster_live_workers\{[^}]*\} 2$/m.test(t[0]) &&
          /^scoreflow_train_loss\{/m.test(t[0]) &&
          t.slice(1).every((x) => /^scoreflow_train_loss\{/m.test(x));
        return ready ? t : undefined;
      },
    );

    for (const [name, port] of targets) {
      assert.equal((await get(port, '/healthz')).status, 200, `${name} /healthz`);
      assert.equal((await get(port, '/readyz')).status, 200, `${name} /readyz after the workers joined`);
    }

    const exported = new Set(texts.flatMap((t) => [...exposedNames(t)]));
    const { problems, used } = unknownMetrics(deployQueries(), exported);
    assert.deepEqual(problems, [], 'dashboard or alert queries naming metrics the running processes do not export');
    assert.ok(used.size >= 20, `only ${used.size} metrics used`);

    // The identity labels and the worker-only series, as the processes serve them.
    assert.match(texts[0], new RegExp(`^scoreflow_train_loss\\{run="${RUN}",role="coordinator"\\} \\S+$`, 'm'));
    assert.match(texts[0], /^scoreflow_cluster_expected_workers\{[^}]*\} 2$/m);
    for (const [i, [id]] of targets.slice(1).entries()) {
      const text = texts[i + 1];
      assert.match(text, new RegExp(`^scoreflow_train_loss\\{run="${RUN}",role="worker",worker="${id}",device="cpu"\\} \\S+$`, 'm'));
      for (const phase of ['compute', 'allreduce', 'wait']) {
        assert.match(
          text,
          new RegExp(`^scoreflow_train_step_phase_duration_seconds_count\\{[^}]*phase="${phase}"[^}]*\\} [1-9]`, 'm'),
          `${id}: ${phase}`,
        );
      }
      assert.match(text, /^scoreflow_transport_sent_bytes_total\{[^}]*\} [1-9]/m, `${id}: bytes sent`);
      assert.match(text, /^process_resident_memory_bytes\{/m, `${id}: default process metrics`);
    }
  });

  test("a real Prometheus scrapes them: PromQL returns the loss, 2 live workers and the workers' series", async () => {
    type Sample = { metric: Record<string, string>; value: [number, string] };
    const query = async (q: string): Promise<Sample[]> => {
      const res = await fetch(`http://127.0.0.1:${webPort}/api/v1/query?query=${encodeURIComponent(q)}`, {
        signal: AbortSignal.timeout(5000),
      });
      const body = (await res.json()) as { status: string; error?: string; data: { result: Sample[] } };
      assert.equal(body.status, 'success', `${q}: ${body.error}`);
      return body.data.result;
    };
    let seen = '';
    const got = await poll(
      () =>
        `Prometheus to see the cluster (last: ${seen}); its log:\n${prometheus!.output()}\ncoordinator:\n${coordinator.output().slice(-3000)}`,
      60_000,
      async () => {
        assert.ok(alive(prometheus!), `prometheus exited:\n${prometheus!.output()}`);
        const [loss, live, workers, up] = await Promise.all([
          query(`scoreflow_train_loss{run="${RUN}",role="coordinator"}`),
          query(`scoreflow_cluster_live_workers{run="${RUN}",role="coordinator"}`),
          query(`scoreflow_train_loss{run="${RUN}",role="worker"}`),
          query('up{job=~"scoreflow-.*"} == 1'),
        ]);
        seen = JSON.stringify({ loss: loss.length, live: live.map((s) => s.value[1]), workers: workers.length, up: up.length });
        return loss.length === 1 && live.length === 1 && live[0].value[1] === '2' && workers.length === 2 && up.length === 3
          ? { loss, workers }
          : undefined;
      },
      500,
    );

    const [loss] = got.loss;
    assert.ok(Number.isFinite(Number(loss.value[1])) && Number(loss.value[1]) > 0, `loss ${loss.value[1]}`);
    assert.equal(loss.metric.job, 'scoreflow-coordinator');
    assert.equal(loss.metric.instance, `127.0.0.1:${ports.coordinator}`);
    const workers = got.workers.map((s) => ({
      worker: s.metric.worker,
      device: s.metric.device,
      job: s.metric.job,
      instance: s.metric.instance,
    }));
    workers.sort((a, b) => a.worker.localeCompare(b.worker));
    assert.deepEqual(
      workers,
      [...ports.workers]
        .sort()
        .map(([worker, port]) => ({ worker, device: 'cpu', job: 'scoreflow-worker', instance: `127.0.0.1:${port}` })),
    );

    // The alert rules are loaded and evaluate without error on the real series.
    const rules = await poll(
      () => 'the alert rules to be evaluated',
      30_000,
      async () => {
        const res = await fetch(`http://127.0.0.1:${webPort}/api/v1/rules`, { signal: AbortSignal.timeout(5000) });
        const all = (
          (await res.json()) as { data: { groups: { rules: { name: string; health: string; lastError?: string }[] }[] } }
        ).data.groups.flatMap((g) => g.rules);
        return all.length > 0 && all.every((r) => r.health !== 'unknown') ? all : undefined;
      },
    );
    assert.equal(rules.length, 7);
    assert.deepEqual(
      rules.filter((r) => r.health !== 'ok').map((r) => `${r.name}: ${r.lastError}`),
      [],
    );
  });

  test('a coordinator serving metrics exits by itself when its run is done', async () => {
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([short.exited, new Promise((r) => (timer = setTimeout(() => r('still running'), 90_000)))]);
    clearTimeout(timer);
    assert.equal(code, 0, `coordinator of a 3-step run: ${code}\n${short.output().slice(-4000)}`);
    assert.match(short.output(), /^coordinator: worker opsshort-w0 metrics on :\d+\/metrics$/m);
    assert.match(short.output(), /^coordinator: run opsshort done at step 3/m);
  });
});
