/**
 * Cluster benchmark: `benchCluster()` returns JSON-able figures.
 *  - raw NATS publish/subscribe throughput (the broker and client ceiling, measured in the
 *    same run) with max_payload-sized messages and with the all-reduce's chunk size; the
 *    larger of the two is the reference the all-reduce is compared with (`of_raw`);
 *  - communication only: N = 2..8 worker processes all-reducing a 1.05M-float vector
 *    (the reference ScoreNet's size) with a near-free synthetic objective: latency and
 *    bus bandwidth (NCCL's convention: 2(N-1)/N · bytes / time). `allreduce_ms` is the
 *    slowest worker's time from its own gradient to the full average, so it includes
 *    waiting for a peer whose compute finished later (compute skew, large on a shared
 *    machine); `collective_ms` is the time of the worker that finished computing last (the
 *    collective alone, once every input exists: what NCCL's tests time after a barrier);
 *  - training: the reference ScoreNet at batch 32 with 1 and 2 worker processes: per-step
 *    compute, all-reduce and wait (ack → next plan, which includes applying the update)
 *    time, bytes per worker, images/s, and the step time over the compute time.
 * The coordinator runs in this process; workers are real `worker start` processes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { connectNats } from '../src/cluster/connect.js';
import { Coordinator } from '../src/coordinator/coordinator.js';
import { NatsServer } from '../src/cluster/nats-server.js';
import type { StepReport } from '../src/telemetry/hub.js';
import { packagePath } from '../src/core/paths.js';
import { chunkFloatsFor } from '../src/protocol/chunking.js';
import { decode } from '../src/protocol/envelope.js';
import { subjects } from '../src/protocol/subjects.js';
import type { TransportChoice } from '../src/protocol/transports.js';
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

export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
export const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

/** Publisher and subscriber on two connections: MB/s of payload delivered (`size` 0: max_payload - 1 KiB). */
async function rawNats(url: string, totalBytes: number, size = 0): Promise<Record<string, number>> {
  const [pub, sub] = [await connectNats({ url }), await connectNats({ url })];
  size ||= (pub.info!.max_payload - 1024) & ~3;
  const count = Math.ceil(totalBytes / size);
  const flushEvery = Math.max(16, Math.round((16 << 20) / size));
  const payload = new Uint8Array(size).fill(7);
  let got = 0;
  const done = new Promise<void>((r) => sub.subscribe('bench.raw', { callback: () => ++got === count && r() }));
  await sub.flush();
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    pub.publish('bench.raw', payload);
    if (i % flushEvery === flushEvery - 1) await pub.flush();
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

export function startWorkers(n: number, url: string, run: string, backend: string, threads: number): ChildProcess[] {
  return Array.from({ length: n }, (_, i) =>
    spawn(
      process.execPath,
      [
        ...workerNodeArgs(),
        packagePath('bin', 'worker.js'),
        'start',
        '--nats',
        url,
        '--run',
        run,
        '--id',
        `${run}-${i}`,
        '--backend',
        backend,
        '--threads',
        String(threads),
        '--no-jobs',
      ],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    ),
  );
}

/** The workers' acks of one step: each worker's all-reduce time (the coordinator's report keeps the slowest). */
type AckTimes = Map<number, number[]>;

export interface RunOptions {
  n: number;
  run: string;
  configJson: string;
  batchSize: number;
  steps: number;
  backend: string;
  threads: number;
  transport?: TransportChoice;
  /** gloo: the plan's bucket size (0: one all-reduce after the backward pass; default the coordinator's). */
  bucketFloats?: number;
}

/** One run: in-process coordinator, n worker processes; every step's report and ack times. */
export async function runCluster(server: NatsServer, o: RunOptions): Promise<{ reports: StepReport[]; acks: AckTimes }> {
  const dir = mkdtempSync(join(tmpdir(), 'scoreflow-bench-'));
  const nc = await connectNats({ url: server.url });
  const acks: AckTimes = new Map();
  // A listener on the coordinator's subject (the coordinator itself only reports maxima).
  nc.subscribe(subjects.coord(o.run), {
    callback: (err, m) => {
      if (err) return;
      try {
        const env = decode(m.data);
        if (env.kind === 'ack' && !env.body.error) (acks.get(env.step) ?? acks.set(env.step, []).get(env.step)!).push(env.body.allreduceMs);
      } catch {
        // not ours to judge
      }
    },
  });
  const c = new Coordinator({
    nc,
    run: o.run,
    outDir: dir,
    configJson: o.configJson,
    batchSize: o.batchSize,
    steps: o.steps,
    minWorkers: o.n,
    checkpointEvery: 0,
    checksumEvery: 0,
    syncTimeoutMs: 120_000,
    transport: o.transport ?? 'nats',
    bucketFloats: o.bucketFloats,
  });
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
  return { reports, acks };
}

export function summarise({ reports, acks }: { reports: StepReport[]; acks: AckTimes }, warmup: number) {
  const rs = reports.slice(warmup);
  const collective = rs
    .map((r) => acks.get(r.step))
    .filter((a) => a && a.length === rs[0]?.workers)
    .map((a) => Math.min(...a!));
  return {
    steps: rs.length,
    step_ms: round(median(rs.map((r) => r.stepMs))),
    compute_ms: round(median(rs.map((r) => r.computeMs))),
    allreduce_ms: round(median(rs.map((r) => r.allreduceMs))),
    collective_ms: round(median(collective)),
    wait_ms: round(median(rs.map((r) => r.waitMs))),
    wait_ms_mean: round(rs.reduce((a, r) => a + r.waitMs, 0) / Math.max(1, rs.length), 3),
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
    const rawBytes = (quick ? 100 : 400) << 20;
    const chunkBytes = 4 * chunkFloatsFor(1 << 20); // the embedded server's max_payload
    const raw = { max_payload: await rawNats(server.url, rawBytes), chunk_size: await rawNats(server.url, rawBytes, chunkBytes) };
    const rawMBps = Math.max(raw.max_payload.mb_per_s, raw.chunk_size.mb_per_s);
    out.raw_nats = { ...raw, mb_per_s: rawMBps };
    const P = 1_050_000;
    const comm: Record<string, unknown> = {};
    for (const n of opts.commWorkers ?? (quick ? [2, 4] : [2, 4, 8])) {
      log(`cluster: all-reduce of ${P} floats over ${n} worker processes`);
      const cfg = { synthetic: true, params: P, batchSize: n, samples: 1024, seed: 1, lr: 1e-3 };
      const run = await runCluster(server, {
        n,
        run: `comm${n}`,
        configJson: JSON.stringify(cfg),
        batchSize: n,
        steps: quick ? 15 : 40,
        backend: 'cpu',
        threads: 1,
      });
      const s = summarise(run, 3);
      const busBytes = ((2 * (n - 1)) / n) * P * 4;
      const bus = round(busBytes / (s.allreduce_ms / 1000) / 1e6, 1);
      const busCollective = round(busBytes / (s.collective_ms / 1000) / 1e6, 1);
      comm[`workers_${n}`] = {
        ...s,
        vector_floats: P,
        bus_bandwidth_mb_per_s: bus,
        collective_bus_bandwidth_mb_per_s: busCollective,
        of_raw: round(bus / rawMBps, 3),
        collective_of_raw: round(busCollective / rawMBps, 3),
      };
    }
    out.allreduce = comm;
    if (!opts.skipTraining) {
      const backend = opts.backend ?? 'wasm';
      const train: Record<string, unknown> = {};
      const cfgJson = JSON.stringify({ seed: 0, batchSize: 32, dataset: 'train' });
      for (const n of [1, 2]) {
        const threads = Math.max(1, Math.floor(availableParallelism() / n));
        log(`cluster: ScoreNet training, batch 32, ${n} worker(s) x ${threads} thread(s) on ${backend}`);
        const run = await runCluster(server, {
          n,
          run: `train${n}`,
          configJson: cfgJson,
          batchSize: 32,
          steps: quick ? 6 : 12,
          backend,
          threads,
        });
        train[`workers_${n}`] = { threads_per_worker: threads, ...summarise(run, 2) };
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
  const r = await benchCluster({
    quick: process.argv.includes('--quick'),
    skipTraining: process.argv.includes('--no-training'),
    log: (l) => process.stderr.write(l + '\n'),
  });
  process.stdout.write(JSON.stringify(r, null, 2) + '\n');
}
