/**
 * Cluster benchmark: `benchCluster()` returns JSON-able figures.
 *  - raw NATS publish/subscribe throughput with ~1 MB messages (the broker and client
 *    ceiling, measured in the same run);
 *  - communication only: N = 2..8 worker processes all-reducing a 1.05M-float vector
 *    (the reference ScoreNet's size) with a near-free synthetic objective: latency and
 *    bus bandwidth (NCCL's convention: 2(N-1)/N · bytes / time);
 *  - training: the reference ScoreNet at batch 32 with 1 and 2 worker processes: per-step
 *    compute and all-reduce time, bytes per worker, images/s.
 * The coordinator runs in this process; workers are real `worker start` processes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { connectNats } from '../src/coordinator/connect.js';
import { Coordinator } from '../src/coordinator/coordinator.js';
import { NatsServer } from '../src/coordinator/nats-server.js';
import type { StepReport } from '../src/coordinator/telemetry.js';
import { packagePath } from '../src/core/paths.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface ClusterBenchOptions {
  quick?: boolean;
  /** Worker counts of the communication-only run. */
  commWorkers?: number[];
  /** Skip the (slow) ScoreNet training part. */
  skipTraining?: boolean;
  backend?: string;
  log?: (line: string) => void;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

/** Publisher and subscriber on two connections: MB/s of payload delivered. */
async function rawNats(url: string, count: number): Promise<Record<string, number>> {
  const [pub, sub] = [await connectNats({ url }), await connectNats({ url })];
  const size = (pub.info!.max_payload - 1024) & ~3;
  const payload = new Uint8Array(size).fill(7);
  let got = 0;
  const done = new Promise<void>((r) => sub.subscribe('bench.raw', { callback: () => ++got === count && r() }));
  await sub.flush();
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    pub.publish('bench.raw', payload);
    if (i % 16 === 15) await pub.flush();
  }
  await done;
  const s = (performance.now() - t0) / 1000;
  await pub.close();
  await sub.close();
  return { message_bytes: size, messages: count, seconds: round(s, 3), mb_per_s: round((count * size) / s / 1e6, 1) };
}

/** Extra node flags for the worker processes, e.g. SCOREFLOW_BENCH_WORKER_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof". */
function workerNodeArgs(): string[] {
  return (process.env.SCOREFLOW_BENCH_WORKER_ARGS ?? '').split(/\s+/).filter(Boolean);
}

function startWorkers(n: number, url: string, run: string, backend: string, threads: number): ChildProcess[] {
  return Array.from({ length: n }, (_, i) =>
    spawn(process.execPath, [...workerNodeArgs(), packagePath('bin', 'worker.js'), 'start', '--nats', url, '--run', run, '--id', `${run}-${i}`, '--backend', backend, '--threads', String(threads)], {
      stdio: ['ignore', 'ignore', 'pipe'],
    }),
  );
}

/** One run: in-process coordinator, n worker processes; the step reports after `warmup`. */
async function runCluster(server: NatsServer, o: { n: number; run: string; configJson: string; batchSize: number; steps: number; backend: string; threads: number }): Promise<StepReport[]> {
  const dir = mkdtempSync(join(tmpdir(), 'scoreflow-bench-'));
  const nc = await connectNats({ url: server.url });
  const c = new Coordinator({ nc, run: o.run, outDir: dir, configJson: o.configJson, batchSize: o.batchSize, steps: o.steps, minWorkers: o.n, checkpointEvery: 0, checksumEvery: 0, syncTimeoutMs: 120_000 });
  const reports: StepReport[] = [];
  c.telemetry.on('step', (r) => reports.push(r));
  await c.start();
  const procs = startWorkers(o.n, server.url, o.run, o.backend, o.threads);
  try {
    const res = await c.done;
    if (!res.ok) throw new Error(`bench run ${o.run} failed: ${res.reason}`);
  } finally {
    await Promise.all(procs.map((p) => (p.exitCode === null ? new Promise((r) => p.once('exit', r)) : undefined)));
    await nc.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return reports;
}

function summarise(reports: StepReport[], warmup: number) {
  const rs = reports.slice(warmup);
  return {
    steps: rs.length,
    step_ms: round(median(rs.map((r) => r.stepMs))),
    compute_ms: round(median(rs.map((r) => r.computeMs))),
    allreduce_ms: round(median(rs.map((r) => r.allreduceMs))),
    bytes_sent_per_worker: Math.round(median(rs.map((r) => r.bytesSent))),
    bytes_received_per_worker: Math.round(median(rs.map((r) => r.bytesReceived))),
    images_per_s: round(median(rs.map((r) => r.imagesPerSec)), 1),
  };
}

export async function benchCluster(opts: ClusterBenchOptions = {}): Promise<Record<string, unknown>> {
  const log = opts.log ?? (() => {});
  const quick = !!opts.quick;
  const server = await NatsServer.start({ jetstream: false });
  const out: Record<string, unknown> = { nats_server: server.url, cores: availableParallelism() };
  try {
    log('cluster: raw NATS publish/subscribe');
    out.raw_nats = await rawNats(server.url, quick ? 100 : 400);
    const P = 1_050_000;
    const comm: Record<string, unknown> = {};
    for (const n of opts.commWorkers ?? (quick ? [2, 4] : [2, 4, 8])) {
      log(`cluster: all-reduce of ${P} floats over ${n} worker processes`);
      const cfg = { synthetic: true, params: P, batchSize: n, samples: 1024, seed: 1, lr: 1e-3 };
      const reports = await runCluster(server, { n, run: `comm${n}`, configJson: JSON.stringify(cfg), batchSize: n, steps: quick ? 8 : 20, backend: 'cpu', threads: 1 });
      const s = summarise(reports, 3);
      const busBytes = (2 * (n - 1) / n) * P * 4;
      comm[`workers_${n}`] = { ...s, vector_floats: P, bus_bandwidth_mb_per_s: round(busBytes / (s.allreduce_ms / 1000) / 1e6, 1) };
    }
    out.allreduce = comm;
    if (!opts.skipTraining) {
      const backend = opts.backend ?? 'wasm';
      const train: Record<string, unknown> = {};
      const cfgJson = JSON.stringify({ seed: 0, batchSize: 32, dataset: 'train' });
      for (const n of [1, 2]) {
        const threads = Math.max(1, Math.floor(availableParallelism() / n));
        log(`cluster: ScoreNet training, batch 32, ${n} worker(s) x ${threads} thread(s) on ${backend}`);
        const reports = await runCluster(server, { n, run: `train${n}`, configJson: cfgJson, batchSize: 32, steps: quick ? 4 : 8, backend, threads });
        train[`workers_${n}`] = { threads_per_worker: threads, ...summarise(reports, 2) };
      }
      const two = train.workers_2 as ReturnType<typeof summarise>;
      train.overhead_over_compute_2_workers = round(two.step_ms / two.compute_ms - 1, 3);
      out.training = train;
    }
  } finally {
    await server.close();
  }
  return out;
}

// `node dist/bench/cluster.js [--quick]` prints the figures on its own.
if (import.meta.url === `file://${process.argv[1]}`) {
  const r = await benchCluster({ quick: process.argv.includes('--quick'), skipTraining: process.argv.includes('--no-training'), log: (l) => process.stderr.write(l + '\n') });
  process.stdout.write(JSON.stringify(r, null, 2) + '\n');
}
