/**
 * Local worker processes for `coordinator start --gpus N`: one `worker start` per device,
 * each seeing only its own GPU (CUDA_VISIBLE_DEVICES=i), or CPU workers when the machine
 * has fewer GPUs than asked. Their output is prefixed with their index.
 *
 * They end when the coordinator does, however it ends (SIGKILL included), in two ways: the
 * kernel's parent-death signal (src/cluster/parent-death.ts), and `--parent-pipe`: each
 * worker's stdin is a pipe from the coordinator, which the kernel closes when the
 * coordinator dies, and the worker exits when it reads end-of-file.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { packagePath } from '../core/paths.js';
import { splitUrlCredentials } from '../cluster/auth.js';
import { dieWithParent } from '../cluster/parent-death.js';
import { computeCores } from '../core/cpus.js';

/** Number of NVIDIA GPUs (0 when nvidia-smi is missing or fails). */
export function countGpus(): number {
  try {
    return execFileSync('nvidia-smi', ['-L'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 })
      .split('\n')
      .filter((l) => l.startsWith('GPU ')).length;
  } catch {
    return 0;
  }
}

export interface SpawnOptions {
  n: number;
  nats: string;
  run: string;
  backend: string;
  /** Threads per worker; default: cores / n for CPU workers, 1 for GPU workers. */
  threads?: number;
  /** Extra environment (credentials). */
  env: Record<string, string>;
  /** Worker i's --metrics-port (e.g. from nextFreePorts in src/metrics); none: no metrics endpoint. */
  metricsPorts?: number[];
  /** More `worker start` flags, the same for every worker. */
  extraArgs?: string[];
  /** Restarts of one worker process after it died (exit code not 0) before giving up on it. */
  maxRestarts: number;
  /** Delay before the first restart of a worker, doubled on each further one (at most 30 s). */
  restartBackoffMs: number;
  /** A worker was given up on; `running` is how many spawned workers are still supervised. */
  onGiveUp?: (id: string, running: number) => void;
  log: (line: string) => void;
}

export interface Spawned {
  /** The current process of every worker (a restarted worker's newest one). */
  readonly children: ChildProcess[];
  /** No more restarts from now on (the run has ended). */
  endSupervision(): void;
  /** SIGTERM, then SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Starts the workers and supervises them: a worker process that dies (any exit but 0: a
 * signal, a crash) is started again under the same id after a back-off (restartBackoffMs,
 * doubled per restart of that worker, at most 30 s), at most maxRestarts times; then one
 * line says it is given up and onGiveUp is told how many are left.
 */
export function spawnWorkers(o: SpawnOptions): Spawned {
  const gpus = countGpus();
  const onGpu = Math.min(gpus, o.n);
  if (onGpu < o.n) {
    o.log(`coordinator: asked for ${o.n} GPU worker(s), found ${gpus} GPU(s): running ${o.n - onGpu} worker(s) on the CPU of this machine`);
  }
  const cpuThreads = o.threads ?? Math.max(1, Math.floor(computeCores() / Math.max(1, o.n - onGpu)));
  const children: ChildProcess[] = [];
  const restarts = new Array<number>(o.n).fill(0);
  const timers = new Set<NodeJS.Timeout>();
  let given = 0;
  let supervising = true;
  const nats = splitUrlCredentials(o.nats);
  const launch = (i: number): void => {
    const gpu = i < onGpu;
    const id = `${o.run}-w${i}`;
    const args = [
      packagePath('bin', 'worker.js'),
      'start',
      '--nats',
      nats.url,
      '--run',
      o.run,
      '--id',
      id,
      '--device',
      String(gpu ? i : -1),
      '--threads',
      String(gpu ? (o.threads ?? 1) : cpuThreads),
      '--backend',
      o.backend,
    ];
    const metricsPort = o.metricsPorts?.[i];
    if (metricsPort !== undefined) args.push('--metrics-port', String(metricsPort));
    args.push('--parent-pipe', ...(o.extraArgs ?? []));
    const env = { ...process.env, ...o.env, ...nats.env, CUDA_VISIBLE_DEVICES: gpu ? String(i) : '' };
    const [cmd, argv] = dieWithParent(process.execPath, args);
    // stdin: the pipe the worker watches (nothing is ever written to it; it only closes).
    const child = spawn(cmd, argv, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    child.stdin!.on('error', () => {}); // EPIPE once the worker is gone
    const prefix = (l: string) => {
      if (!l) return;
      // A Stop's reason: the coordinator says it itself, once.
      if (/^worker \S+: run (stopped|finished): /.test(l) || /^worker: run \S+ stopped: /.test(l)) return;
      o.log(`[w${i}] ${l}`);
      // The port the worker bound (its --metrics-port, or the next free one): say it for scrape configs.
      const port = /^worker \S+: metrics on :(\d+)\//.exec(l)?.[1];
      if (port) o.log(`coordinator: worker ${id} metrics on :${port}/metrics`);
    };
    createInterface({ input: child.stdout!, crlfDelay: Infinity }).on('line', prefix);
    createInterface({ input: child.stderr!, crlfDelay: Infinity }).on('line', prefix);
    child.on('exit', (code, sig) => {
      if (code === 0 || !supervising) return;
      const what = `coordinator: worker process w${i} exited (${code ?? sig})`;
      if (restarts[i] >= o.maxRestarts) {
        given++;
        o.log(`${what} and was restarted ${restarts[i]} time(s) already (--max-restarts ${o.maxRestarts}): giving up on it`);
        o.onGiveUp?.(id, o.n - given);
        return;
      }
      const delay = Math.min(30_000, o.restartBackoffMs * 2 ** restarts[i]);
      restarts[i]++;
      o.log(`${what}; restarting it in ${(delay / 1000).toFixed(1)} s (restart ${restarts[i]} of ${o.maxRestarts})`);
      const t = setTimeout(() => {
        timers.delete(t);
        if (supervising) launch(i);
      }, delay);
      timers.add(t);
    });
    children[i] = child;
  };
  for (let i = 0; i < o.n; i++) launch(i);
  const endSupervision = () => {
    supervising = false;
    for (const t of timers) clearTimeout(t);
    timers.clear();
  };
  return {
    children,
    endSupervision,
    async stop(graceMs = 5000) {
      endSupervision();
      await Promise.all(
        children.map((c) => {
          if (c.exitCode !== null || c.signalCode !== null) return;
          const exited = new Promise((r) => c.once('exit', r));
          c.kill('SIGTERM');
          const t = setTimeout(() => c.kill('SIGKILL'), graceMs);
          return exited.then(() => clearTimeout(t));
        }),
      );
    },
  };
}
