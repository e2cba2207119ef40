// The image and the Kubernetes manifests, run: scripts/container-bases.sh builds the image with
// podman (local stand-ins for its public bases; cached after the first run), then the rendered
// base kustomization's pods are started as podman containers on one podman network of their own,
// each its own network host: NATS (the StatefulSet's spec, its ConfigMap and the token from a test
// Secret), the coordinator (the Job's spec: --no-spawn, checkpoints on a volume) and two workers
// (the StatefulSet's spec, SCOREFLOW_DATA_HOST = the container's IP as the downward API gives the
// pod IP). Each container gets what its spec says: command, args, env (values, Secret keys,
// status.podIP), user and group, read-only root filesystem with only its declared volumes
// writable, no privilege escalation, capabilities dropped; probes are requested at their paths
// and ports. The only changes: the coordinator trains a small model for a fixed number of steps
// instead of its --epochs (so the run takes a minute), and the GPU request, which podman cannot
// grant (the workers' --device 0 runs on the CPU where there is no GPU, as the CLI does).
//
// The run trains with torch over gloo (the workers find their addresses themselves); a real
// Prometheus on the host scrapes the coordinator and the workers at their container IPs and must
// see every target up, the loss and images/s; a worker container is SIGKILLed mid-run and another
// started in its place (as the StatefulSet would); then the coordinator container is SIGKILLed and
// started again (as the Job would), resuming from its volume; the run finishes with every step
// once in train.jsonl.
//
// Needs root, podman, runc, mmdebstrap (scripts/setup.sh). Where podman cannot run containers, every
// test here fails with one line saying why.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { packagePath } from '../src/core/paths.js';
import { findFreePort } from '../src/metrics/index.js';
import { TINY_NET } from './helpers/cli.js';
import { containersOf, podSpec, render, type Obj } from './helpers/kustomize.js';
import { logged, poll, range } from './helpers/procs.js';

const IMAGE = 'localhost/scoreflow:latest';
const STEPS = 1200;
const env = { ...process.env, CONTAINERS_CONF: process.env.CONTAINERS_CONF ?? packagePath('deploy', 'podman', 'containers.conf') };
const lastLine = (s: string) => s.trim().split('\n').filter(Boolean).at(-1) ?? '';

function podman(args: string[], timeoutMs = 60_000): SpawnSyncReturns<string> {
  return spawnSync('podman', args, { env, encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 });
}

function podmanOk(args: string[], timeoutMs?: number): string {
  const r = podman(args, timeoutMs);
  if (r.status !== 0) throw new Error(`podman ${args.slice(0, 3).join(' ')}: ${lastLine(r.stderr || r.stdout || String(r.error))}`);
  return r.stdout.trim();
}

/** Why this machine cannot build and run the containers, or null when it can. */
function cannotRunContainers(): string | null {
  if (spawnSync('sh', ['-c', 'command -v podman'], { encoding: 'utf8' }).status !== 0)
    return 'podman is not installed (bash scripts/setup.sh installs podman, runc and mmdebstrap)';
  if (process.getuid?.() !== 0) return 'the container tests need root (podman import, mmdebstrap)';
  const t0 = Date.now();
  const b = spawnSync('bash', [packagePath('scripts', 'container-bases.sh')], {
    env,
    encoding: 'utf8',
    timeout: 1_500_000,
    maxBuffer: 64 << 20,
  });
  if (b.status !== 0) return `scripts/container-bases.sh failed (${b.status ?? b.signal}): ${lastLine(b.stderr)}`;
  process.stderr.write(`container-cluster: image ready in ${((Date.now() - t0) / 1000).toFixed(0)} s (${lastLine(b.stderr)})\n`);
  const r = podman(['run', '--rm', '--pull', 'never', '--network', 'none', IMAGE, '-e', 'process.stdout.write("ok")']);
  if (r.status !== 0 || r.stdout !== 'ok') return `podman cannot run a container here: ${lastLine(r.stderr || r.stdout)}`;
  return null;
}

/** GET on a fresh connection each time (a pooled keep-alive socket the server has just closed
 *  would fail the request, which is not what a probe means). */
function httpGet(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = get(url, { agent: false, timeout: 3000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timed out after 3 s')));
    req.on('error', reject);
  });
}

/** One pod of a rendered workload, as a podman container. */
interface Pod {
  name: string;
  ip: string;
  workload: Obj;
  aliases?: string[];
  /** Environment variables of the spec left out (the replacement worker finds its address itself). */
  dropEnv?: string[];
  /** The container's args as the test runs them (default: the spec's). */
  args?: (specArgs: string[]) => string[];
  /** The container's CPU limit as the test runs it (default: the spec's limits.cpu, at most this machine's cores). */
  cpus?: number;
}

/** A Kubernetes CPU quantity ("2", "500m", "1.5") in CPUs. */
const cpuQuantity = (q: string | number) => (typeof q === 'number' ? q : q.endsWith('m') ? Number(q.slice(0, -1)) / 1000 : Number(q));

describe(
  'the image and the Kubernetes pods as podman containers: torch + gloo, a killed worker, a restarted coordinator, Prometheus',
  { timeout: 1_800_000 },
  () => {
    const id = randomBytes(3).toString('hex');
    const net = `sf-ct-${id}`;
    const dir = mkdtempSync(join(tmpdir(), 'scoreflow-ct-'));
    // nats-server parses a $VARIABLE's value as a config value: a token that starts with a digit is read as a
    // number and refused, so tokens start with a letter (as deploy/README.md says to make them).
    const token = `sf${randomBytes(24).toString('hex')}`;
    const secrets: Record<string, Record<string, string>> = { 'scoreflow-nats': { token } };
    const objs = render(packagePath('deploy', 'k8s', 'base'));
    const find = (kind: string, name: string) => {
      const o = objs.find((x) => x.kind === kind && x.metadata.name === name);
      assert.ok(o, `no ${kind} ${name} in the rendered base`);
      return o;
    };
    const names: string[] = [];
    const volumes: string[] = [];
    let why: string | null = 'not checked yet';
    let subnetPrefix = '';
    let prometheus: ChildProcess | undefined;
    let promOut = '';
    let webPort = 0;
    const pods = new Map<string, Pod>();

    const ipOf = (n: number) => `${subnetPrefix}.${n}`;
    const volName = (claim: string) => `sf-ct-${id}-${claim}`;
    const logs = (name: string) => {
      const r = podman(['logs', name]);
      return `${r.stdout}${r.stderr}`;
    };

    /** `podman run` arguments for a pod of a rendered workload, following its container spec. */
    function runArgs(p: Pod): string[] {
      const spec = podSpec(p.workload)!;
      const [c] = containersOf(p.workload);
      const sc = { ...spec.securityContext, ...c.securityContext };
      const a = ['run', '-d', '--pull', 'never', '--name', p.name, '--hostname', p.name, '--network', net, '--ip', p.ip];
      for (const al of p.aliases ?? []) a.push('--network-alias', al);
      if (sc.runAsUser !== undefined) a.push('--user', `${sc.runAsUser}:${sc.runAsGroup ?? sc.runAsUser}`);
      // --read-only-tmpfs=false: only the declared volumes are writable, as on Kubernetes.
      if (sc.readOnlyRootFilesystem) a.push('--read-only', '--read-only-tmpfs=false');
      if (sc.allowPrivilegeEscalation === false) a.push('--security-opt', 'no-new-privileges');
      // limits.cpu as the cgroup's CFS quota, which the processes read for their default thread count (core/cpus.ts)
      const limit = c.resources?.limits?.cpu;
      const cpus = p.cpus ?? (limit === undefined ? undefined : Math.min(cpuQuantity(limit), availableParallelism()));
      if (cpus !== undefined) a.push('--cpus', String(cpus));
      for (const cap of sc.capabilities?.drop ?? []) a.push('--cap-drop', cap);
      for (const e of c.env ?? []) {
        if (p.dropEnv?.includes(e.name)) continue;
        let v: string | undefined = e.value;
        const ref = e.valueFrom;
        if (ref?.secretKeyRef) v = secrets[ref.secretKeyRef.name]?.[ref.secretKeyRef.key];
        else if (ref?.fieldRef?.fieldPath === 'status.podIP') v = p.ip;
        else if (ref?.fieldRef?.fieldPath === 'metadata.name') v = p.name;
        assert.ok(v !== undefined, `${p.name}: env ${e.name}: unsupported source ${JSON.stringify(ref)}`);
        a.push('-e', `${e.name}=${v}`);
      }
      const claims = new Map<string, string>();
      for (const v of spec.volumes ?? []) if (v.persistentVolumeClaim) claims.set(v.name, v.persistentVolumeClaim.claimName);
      for (const t of p.workload.spec.volumeClaimTemplates ?? []) claims.set(t.metadata.name, `${t.metadata.name}-${p.name}`);
      for (const m of c.volumeMounts ?? []) {
        const v = (spec.volumes ?? []).find((x: Obj) => x.name === m.name);
        if (claims.has(m.name)) {
          const vol = volName(claims.get(m.name)!);
          if (!volumes.includes(vol)) {
            podmanOk(['volume', 'create', vol]);
            volumes.push(vol);
          }
          // :U gives the volume to the container's user, as fsGroup does on Kubernetes.
          a.push('-v', `${vol}:${m.mountPath}:U${m.readOnly ? ',ro' : ''}`);
        } else if (v?.emptyDir) {
          a.push('--tmpfs', `${m.mountPath}:rw,mode=1777${v.emptyDir.sizeLimit ? `,size=${v.emptyDir.sizeLimit.replace(/i$/, '')}` : ''}`);
        } else if (v?.configMap) {
          const cm = find('ConfigMap', v.configMap.name);
          const d = join(dir, 'configmaps', v.configMap.name);
          mkdirSync(d, { recursive: true });
          for (const [k, text] of Object.entries(cm.data as Record<string, string>)) writeFileSync(join(d, k), text, { mode: 0o644 });
          a.push('-v', `${d}:${m.mountPath}:ro`);
        } else {
          assert.fail(`${p.name}: volume ${m.name}: unsupported kind`);
        }
      }
      if (c.command) a.push('--entrypoint', JSON.stringify(c.command));
      const args = c.args ?? [];
      a.push(c.image, ...(p.args ? p.args(args) : args));
      return a;
    }

    function start(p: Pod): void {
      pods.set(p.name, p);
      if (!names.includes(p.name)) names.push(p.name);
      podmanOk(runArgs(p));
    }

    /** A probe of the pod's container spec, requested at its path and (named) port. */
    async function probe(p: Pod, kind: 'livenessProbe' | 'readinessProbe'): Promise<number> {
      const [c] = containersOf(p.workload);
      const g = c[kind].httpGet;
      const port = typeof g.port === 'number' ? g.port : c.ports.find((x: Obj) => x.name === g.port).containerPort;
      const url = `http://${p.ip}:${port}${g.path}`;
      try {
        return (await httpGet(url)).status;
      } catch (e) {
        throw new Error(`${p.name} ${kind} ${url}: ${(e as Error).message} (container running: ${running(p.name)})`);
      }
    }

    const running = (name: string) => podman(['inspect', '--format', '{{.State.Running}}', name]).stdout.trim() === 'true';
    const exitCode = (name: string) => Number(podman(['inspect', '--format', '{{.State.ExitCode}}', name]).stdout.trim());
    let runDir = '';
    const steps = () => logged(runDir);

    const coordinator = find('Job', 'scoreflow-coordinator');
    const workers = find('StatefulSet', 'scoreflow-worker');
    const nats = find('StatefulSet', 'scoreflow-nats');
    // The run's size: a small model for STEPS steps instead of the manifest's --epochs.
    const small = (args: string[]) => {
      const a = [...args];
      const i = a.indexOf('--epochs');
      assert.ok(i >= 0, 'the coordinator spec has no --epochs to replace');
      a.splice(i, 2);
      return [...a, '--steps', String(STEPS), ...TINY_NET, '--limit', '2048', '--batch-size', '32', '--ckpt-every', '100'];
    };

    before(async () => {
      why = cannotRunContainers();
      if (why) return;
      // The rendered images are local: the image under the name the base kustomization gives it.
      const scoreflowImage = containersOf(coordinator)[0].image as string;
      podmanOk(['tag', IMAGE, scoreflowImage]);
      podmanOk(['network', 'create', net]);
      const subnet = JSON.parse(podmanOk(['network', 'inspect', net]))[0].subnets[0].subnet as string;
      const m = /^(\d+\.\d+\.\d+)\.0\/24$/.exec(subnet);
      assert.ok(m, `network ${net}: subnet ${subnet} is not a /24`);
      subnetPrefix = m[1];

      start({ name: 'scoreflow-nats-0', ip: ipOf(10), workload: nats, aliases: ['scoreflow-nats'] });
      start({ name: 'scoreflow-coordinator', ip: ipOf(20), workload: coordinator, aliases: ['scoreflow-coordinator'], args: small });
      // two 1-CPU worker pods on this 2-core machine (the spec's limit is 4): each computes on 1 thread without being told
      for (const i of [0, 1]) start({ name: `scoreflow-worker-${i}`, ip: ipOf(30 + i), workload: workers, cpus: 1 });
      runDir = join(podmanOk(['volume', 'inspect', '--format', '{{.Mountpoint}}', volName('scoreflow-checkpoints')]), 'run');

      // Prometheus on the host, scraping the containers at their IPs on the network.
      webPort = await findFreePort(0, { host: '127.0.0.1' });
      const target = (p: string) => JSON.stringify(`${pods.get(p)!.ip}:9640`);
      writeFileSync(
        join(dir, 'prometheus.yml'),
        [
          'global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}',
          'scrape_configs:',
          '  - job_name: scoreflow-coordinator',
          `    static_configs: [{targets: [${target('scoreflow-coordinator')}]}]`,
          '  - job_name: scoreflow-worker',
          `    static_configs: [{targets: [${target('scoreflow-worker-0')}, ${target('scoreflow-worker-1')}, ${JSON.stringify(`${ipOf(32)}:9640`)}]}]`,
        ].join('\n') + '\n',
      );
      prometheus = spawn(
        'prometheus',
        [
          `--config.file=${join(dir, 'prometheus.yml')}`,
          `--storage.tsdb.path=${join(dir, 'prometheus-data')}`,
          `--web.listen-address=127.0.0.1:${webPort}`,
          '--log.level=warn',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'] },
      );
      const keep = (b: Buffer) => (promOut = (promOut + b.toString()).slice(-50_000));
      prometheus.stdout!.on('data', keep);
      prometheus.stderr!.on('data', keep);
    });

    after(() => {
      prometheus?.kill('SIGTERM');
      for (const n of names) podman(['rm', '-f', '-t', '0', n]);
      if (subnetPrefix) podman(['network', 'rm', '-f', net]);
      for (const v of volumes) podman(['volume', 'rm', '-f', v]);
      rmSync(dir, { recursive: true, force: true });
    });

    /** The first failure: the tests build on each other, so the later ones fail at once after it. */
    let failed: string | null = null;
    const ready = () => {
      assert.equal(why, null, `container-cluster: ${why}`);
      assert.equal(failed, null, `container-cluster: an earlier step failed: ${failed}`);
    };
    /** A test that records its failure for the tests after it. */
    const check = (name: string, body: () => void | Promise<void>) =>
      test(name, async () => {
        ready();
        try {
          await body();
        } catch (e) {
          failed = `${name}: ${(e as Error).message.split('\n')[0]}`;
          throw e;
        }
      });

    check('the image: the addon loads torch with c10d gloo; non-root; no compilers or npm', () => {
      const r = podman([
        'run',
        '--rm',
        '--pull',
        'never',
        '--network',
        'none',
        '--entrypoint',
        'sh',
        IMAGE,
        '-c',
        'id -u; for c in gcc cc g++ c++ make npm npx corepack; do command -v $c; done; true',
      ]);
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(
        r.stdout.trim().split('\n'),
        ['10001'],
        'the image runs as uid 10001 and has none of gcc, cc, g++, c++, make, npm, npx, corepack',
      );
      // What `auto` decides from: the backend it starts, and the c10d back-ends the addon has.
      const script = [
        "const { startBackend } = await import('/app/dist/src/cli/common.js');",
        "const { c10dInfo } = await import('/app/dist/src/worker/collective/process-group.js');",
        "console.log(JSON.stringify({ backend: await startBackend({ backend: 'auto', threads: 1 }), c10d: c10dInfo() }));",
      ].join(' ');
      const l = podman([
        'run',
        '--rm',
        '--pull',
        'never',
        '--network',
        'none',
        '--read-only',
        '--user',
        '10001:10001',
        IMAGE,
        '--input-type=module',
        '-e',
        script,
      ]);
      assert.equal(l.status, 0, `the backend probe failed in the image: ${l.stderr}`);
      assert.deepEqual(JSON.parse(lastLine(l.stdout)), {
        backend: 'torch',
        c10d: { gloo: true, nccl: false, why: 'libtorch without CUDA (or no GPU visible)' },
      });
    });

    check('the pods start as their specs say: probes answer, non-root, read-only root filesystem', async () => {
      for (const p of pods.values()) {
        await poll(
          () => `${p.name} liveness probe; its log:\n${logs(p.name).slice(-3000)}`,
          60_000,
          async () => {
            assert.ok(running(p.name), `${p.name} exited (${exitCode(p.name)}):\n${logs(p.name).slice(-3000)}`);
            return (await probe(p, 'livenessProbe')) === 200 ? true : undefined;
          },
        );
      }
      for (const name of ['scoreflow-coordinator', 'scoreflow-worker-0', 'scoreflow-worker-1']) {
        const r = podman([
          'exec',
          name,
          'sh',
          '-c',
          'id -u; touch /app/x 2>/dev/null && echo root-fs-writable; touch /tmp/x && echo tmp-writable',
        ]);
        assert.equal(r.stdout.trim(), '10001\ntmp-writable', `${name}: ${r.stdout}${r.stderr}`);
      }
    });

    check('torch over gloo across the containers; Prometheus sees every target up, the loss and images/s', async () => {
      await poll(
        () => `20 steps in train.jsonl; coordinator log:\n${logs('scoreflow-coordinator').slice(-4000)}`,
        120_000,
        () => {
          assert.ok(running('scoreflow-coordinator'), `the coordinator exited:\n${logs('scoreflow-coordinator').slice(-4000)}`);
          return steps().length >= 20 ? true : undefined;
        },
      );
      const log = logs('scoreflow-coordinator');
      assert.match(log, /^coordinator: gradients over gloo/m, 'the run does not use gloo');
      const joined = [...log.matchAll(/^coordinator: worker (\S+) joined \((\S+) pid \d+, device (-?\d+), (\d+) thread\(s\), (\w+)\)/gm)];
      const hosts = [...new Set(joined.map((j) => `${j[2]} ${j[5]} ${j[4]} thread(s)`))].sort();
      assert.deepEqual(
        hosts,
        ['scoreflow-worker-0 torch 1 thread(s)', 'scoreflow-worker-1 torch 1 thread(s)'],
        `both workers join on torch, on as many threads as their pod's CPU limit (1):\n${joined.map((j) => j[0]).join('\n')}`,
      );
      const records = readFileSync(join(runDir, 'train.jsonl'), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Obj);
      assert.ok(
        records.every((r) => r.transport === 'gloo'),
        `transport per step: ${[...new Set(records.map((r) => r.transport))]}`,
      );
      for (const i of [0, 1]) {
        const w = logs(`scoreflow-worker-${i}`);
        assert.ok(
          w.includes(`c10d store on ${ipOf(30 + i)}:29500`),
          `worker ${i}'s c10d store is not on its pod IP ${ipOf(30 + i)}:\n${w.slice(-2000)}`,
        );
      }
      for (const p of pods.values()) assert.equal(await probe(p, 'readinessProbe'), 200, `${p.name} readiness`);

      type Sample = { metric: Record<string, string>; value: [number, string] };
      const query = async (q: string): Promise<Sample[]> => {
        const body = JSON.parse((await httpGet(`http://127.0.0.1:${webPort}/api/v1/query?query=${encodeURIComponent(q)}`)).body) as {
          status: string;
          data: { result: Sample[] };
        };
        assert.equal(body.status, 'success', q);
        return body.data.result;
      };
      let seen = '';
      await poll(
        () => `Prometheus to scrape all three containers (last: ${seen}); its log:\n${promOut}`,
        60_000,
        async () => {
          const [up, loss, rate] = await Promise.all([
            query('up == 1'),
            query('scoreflow_train_loss{role="coordinator"}'),
            query('rate(scoreflow_train_images_total{role="coordinator"}[5s]) > 0'),
          ]);
          const ups = up.map((s) => s.metric.instance).sort();
          seen = JSON.stringify({ up: ups, loss: loss.map((s) => s.value[1]), rate: rate.map((s) => s.value[1]) });
          const want = ['scoreflow-coordinator', 'scoreflow-worker-0', 'scoreflow-worker-1'].map((n) => `${pods.get(n)!.ip}:9640`).sort();
          return JSON.stringify(ups) === JSON.stringify(want) && loss.length === 1 && Number(loss[0].value[1]) > 0 && rate.length === 1
            ? true
            : undefined;
        },
        500,
      );
      const workerRate = await query('scoreflow_train_images_per_second{role="worker"} > 0');
      assert.equal(workerRate.length, 2, 'images/s from both workers');
    });

    check(
      'a worker container SIGKILLed mid-run is replaced; the coordinator container SIGKILLed and started again resumes from its volume; every step once',
      async () => {
        const killedAt = steps().length;
        assert.ok(killedAt < STEPS * 0.5, `the run is too far on (${killedAt} of ${STEPS} steps) to test a kill mid-run`);
        podmanOk(['kill', '--signal', 'KILL', 'scoreflow-worker-1']);
        await poll(
          () => `the coordinator to remove the killed worker:\n${logs('scoreflow-coordinator').slice(-3000)}`,
          30_000,
          () => (/^coordinator: worker \S*scoreflow-worker-1\S* removed/m.test(logs('scoreflow-coordinator')) ? true : undefined),
        );
        podmanOk(['rm', 'scoreflow-worker-1']);
        // The StatefulSet's replacement: the same pod name, a new pod IP. Without SCOREFLOW_DATA_HOST
        // it finds its data-plane address itself: its address towards the NATS container.
        start({ name: 'scoreflow-worker-1', ip: ipOf(32), workload: workers, dropEnv: ['SCOREFLOW_DATA_HOST'], cpus: 1 });
        const before = steps().length;
        await poll(
          () => `the replacement worker to join and train:\n${logs('scoreflow-coordinator').slice(-3000)}`,
          60_000,
          () => {
            const l = logs('scoreflow-coordinator');
            const joins = [...l.matchAll(/^coordinator: worker \S+ joined \(scoreflow-worker-1 /gm)].length;
            return joins >= 2 && steps().length > before + 10 ? true : undefined;
          },
        );
        await poll(
          () =>
            `the replacement to log its c10d store on its own address ${ipOf(32)}:29500; its log:\n${logs('scoreflow-worker-1').slice(-2000)}`,
          10_000,
          () => (logs('scoreflow-worker-1').includes(`c10d store on ${ipOf(32)}:29500`) ? true : undefined),
        );

        // The coordinator: SIGKILL once a checkpoint after the replacement exists, then start it again.
        await poll(
          () => `a checkpoint after the replacement:\n${logs('scoreflow-coordinator').slice(-3000)}`,
          60_000,
          () => {
            const ck = [...logs('scoreflow-coordinator').matchAll(/^coordinator: checkpoint at step (\d+)/gm)].map((x) => Number(x[1]));
            return ck.some((s) => s > before) ? true : undefined;
          },
        );
        const atKill = steps().length;
        assert.ok(atKill < STEPS, `the run ended (${atKill} steps) before the coordinator could be killed`);
        podmanOk(['kill', '--signal', 'KILL', 'scoreflow-coordinator']);
        await poll(
          () => 'the coordinator container to stop',
          20_000,
          () => (running('scoreflow-coordinator') ? undefined : true),
        );
        podmanOk(['start', 'scoreflow-coordinator']);
        const code = await poll(
          () => `the run to finish; coordinator log:\n${logs('scoreflow-coordinator').slice(-4000)}`,
          300_000,
          () => (running('scoreflow-coordinator') ? undefined : exitCode('scoreflow-coordinator')),
          1000,
        );
        const log = logs('scoreflow-coordinator');
        assert.equal(code, 0, `the coordinator exited ${code}:\n${log.slice(-4000)}`);
        const resumed = /^coordinator: resuming run \S+ from its checkpoint at step (\d+)/m.exec(log);
        assert.ok(
          resumed && Number(resumed[1]) > before && Number(resumed[1]) <= atKill,
          `no resume from a checkpoint between steps ${before} and ${atKill}:\n${log.slice(-4000)}`,
        );
        const s = steps();
        assert.deepEqual(s, range(0, STEPS), 'train.jsonl holds every step 0..STEPS-1 once, in order');
        assert.ok(existsSync(join(runDir, 'checkpoint.safetensors')));
      },
    );
  },
);
