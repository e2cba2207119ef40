/**
 * The collective engines against PyTorch's, in one run on one machine (`npm run bench --
 * --only collective`): every figure sits beside its baseline from reference/ddp_baseline.py
 * (torch.distributed gloo, DDP), measured minutes apart under the same load.
 *
 *  - training: the reference ScoreNet at global batch 32 and 120, 2 worker processes x 1 thread
 *    on the torch backend, `coordinator start`-shaped (an in-process coordinator, real `worker
 *    start` processes) over gloo (all-reduce in buckets during the backward pass), gloo without
 *    that overlap (the plan's bucket size 0, as `coordinator start --bucket-kb 0`) and nats;
 *    PyTorch DDP (gloo) at batch 32; and single-process `scoreflow train --threads 2` at both.
 *    The two gloo cases run twice, in the order A B (nats) B A, and a gloo figure's ratios take the
 *    mean of its two runs (the overlap's ratio: the geometric mean of the two orders' ratios, each
 *    beside it), so the order of the runs is not mistaken for the overlap's effect.
 *    Images/s = global batch / step time (the interval between steps acked by every worker),
 *    median over the timed steps; beside it each step's split as the workers report it:
 *    compute (the backward pass, overlapped buckets included), exposed all-reduce (end of
 *    compute to the reduced sum), control-plane wait (before a step could start; its mean too).
 *  - the bare all-reduce of 1,049,633 floats (the ScoreNet's gradient) at 2, 4, 8 processes:
 *    our Gloo group (bench/allreduce-peer.ts, a barrier before each) against
 *    torch.distributed's, and the nats transport's collective time (the all-reduce of the
 *    worker that finished computing last, inside real steps).
 *  - scaling with simulated device compute: a step sleeps 20 or 5 ms (a GPU computing; the
 *    synthetic objective's arithmetic made negligible) and all-reduces a real-size gradient;
 *    step time and efficiency = compute / step time at N = 2, 4, 8, per transport, beside
 *    torch.distributed's same loop; and our process group alone in that very loop
 *    (bench/allreduce-peer.ts with a compute time, no worker around it), so that what the
 *    worker's step adds to the all-reduce is the difference. On a 2-core machine 8 processes
 *    share 2 cores, so these figures measure oversubscription as well as communication.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { NatsServer } from '../src/cluster/nats-server.js';
import { StoreServer } from '../src/worker/collective/process-group.js';
import { packagePath } from '../src/core/paths.js';
import { median, round, runCluster, summarise } from './cluster.js';

export interface CollectiveBenchOptions {
  quick?: boolean;
  python: string;
  referenceDir: string;
  log?: (line: string) => void;
}

const P = 1_049_633;
type Json = Record<string, unknown>;

function ddpBaseline(o: CollectiveBenchOptions, args: string[]): Json {
  const r = spawnSync(o.python, [join(o.referenceDir, 'ddp_baseline.py'), ...args], { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) return { error: (r.stderr || r.error?.message || 'failed').trim().split('\n').pop() };
  return JSON.parse(r.stdout) as Json;
}

/** n bench/allreduce-peer.ts processes in one Gloo group (its extra args after REPS); each one's JSON line. */
async function glooPeers(n: number, reps: number, extra: string[] = []): Promise<Json[]> {
  const store = await StoreServer.listen('127.0.0.1', 0);
  try {
    const outs = await Promise.all(
      Array.from(
        { length: n },
        (_, r) =>
          new Promise<string>((resolve, reject) => {
            const c = spawn(
              process.execPath,
              [
                packagePath('dist', 'bench', 'allreduce-peer.js'),
                String(r),
                String(n),
                String(store.port),
                String(P),
                String(reps),
                ...extra,
              ],
              { stdio: ['ignore', 'pipe', 'pipe'] },
            );
            let out = '';
            let err = '';
            c.stdout.on('data', (b) => (out += b));
            c.stderr.on('data', (b) => (err += b));
            c.once('exit', (code) =>
              code === 0 ? resolve(out) : reject(new Error(`allreduce peer ${r}/${n}: ${err.trim().split('\n').pop()}`)),
            );
          }),
      ),
    );
    return outs.map((o) => JSON.parse(o) as Json);
  } finally {
    store.close();
  }
}

/** Our Gloo all-reduce of P floats across n processes: rank 0's median and min over `reps`. */
async function glooAllreduce(n: number, reps: number): Promise<Json> {
  const rank0 = (await glooPeers(n, reps))[0] as { median_ms: number; min_ms: number };
  return { median_ms: round(rank0.median_ms), min_ms: round(rank0.min_ms) };
}

/**
 * Our Gloo process group in ddp_baseline.py's simulated loop (sleep `ms`, all-reduce P floats)
 * across n processes: the median over steps of the slowest rank's step, as the baseline takes it.
 */
async function glooLoop(n: number, reps: number, ms: number): Promise<Json> {
  const ranks = (await glooPeers(n, reps, [String(ms)])).map((j) => j.steps_ms as number[]);
  const step = median(ranks[0].map((_, i) => Math.max(...ranks.map((s) => s[i]))));
  return { step_ms: round(step), efficiency: round(ms / step, 3) };
}

/** `scoreflow train --threads T` on the torch backend: images/s, median over the steps after a warm-up. */
function singleProcess(threads: number, steps: number, batchSize: number): Json {
  const out = mkdtempSync(join(tmpdir(), 'scoreflow-bench-'));
  try {
    const r = spawnSync(
      process.execPath,
      [
        packagePath('bin', 'scoreflow.js'),
        'train',
        '--steps',
        String(steps),
        '--threads',
        String(threads),
        '--backend',
        'torch',
        '--limit',
        '4096',
        '--batch-size',
        String(batchSize),
        '--out',
        out,
      ],
      { encoding: 'utf8' },
    );
    if (r.status !== 0) return { error: r.stderr.trim().split('\n').pop() };
    const rows = readFileSync(join(out, 'log.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { images_per_s: number });
    return {
      threads,
      batch: batchSize,
      images_per_s: round(median(rows.slice(Math.min(5, rows.length - 1)).map((x) => x.images_per_s)), 1),
    };
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

export async function benchCollective(o: CollectiveBenchOptions): Promise<Json> {
  const log = o.log ?? (() => {});
  const quick = !!o.quick;
  const sizes = quick ? [2, 4] : [2, 4, 8];
  const out: Json = { cores: availableParallelism(), vector_floats: P };
  const server = await NatsServer.start({ jetstream: false });
  try {
    // ---- training, 2 x 1 thread, global batch 32 (beside DDP) and 120; one process at 2 threads beside each
    log('collective: PyTorch DDP (gloo) training, 2 processes x 1 thread, batch 32');
    const steps = quick ? 15 : 40;
    const ddp = ddpBaseline(o, ['--train', '--workers', '2', '--warmup', quick ? '5' : '10', '--steps', String(steps)]);
    const ddpIps = ((ddp.train as Json | undefined)?.ddp as Json | undefined)?.images_per_s as number | undefined;
    for (const batch of [32, 120]) {
      const train: Json = batch === 32 ? { pytorch: ddp.train ?? ddp } : {};
      const cfgJson = JSON.stringify({ seed: 0, batchSize: batch, dataset: 'train[:4096]' });
      const runSteps = batch === 32 ? steps + 5 : Math.round(steps / 2) + 5;
      // gloo with the all-reduce in buckets during the backward pass (the default), gloo with one
      // all-reduce after it (the plan's bucket size 0, `coordinator start --bucket-kb 0`), nats; then
      // the two gloo cases again in the reverse order (A B nats B A), so that the overlap's ratio is
      // measured with each case first once and the order of the runs cannot pass for the overlap
      for (const [name, transport, bucketFloats] of [
        ['gloo', 'gloo', undefined],
        ['gloo_no_overlap', 'gloo', 0],
        ['nats', 'nats', undefined],
        ['gloo_no_overlap_again', 'gloo', 0],
        ['gloo_again', 'gloo', undefined],
      ] as const) {
        log(`collective: ScoreNet training, ${name}, batch ${batch}, 2 workers x 1 thread on torch`);
        const run = await runCluster(server, {
          n: 2,
          run: `train${batch}-${name.replace(/_/g, '-')}`,
          configJson: cfgJson,
          batchSize: batch,
          steps: runSteps,
          backend: 'torch',
          threads: 1,
          transport,
          bucketFloats,
        });
        train[name] = summarise(run, 5);
      }
      log(`collective: scoreflow train --threads 2 (one process), batch ${batch}`);
      train.single_process = singleProcess(2, runSteps, batch);
      const ips = (t: string) => ((train[t] as Json).images_per_s as number) ?? NaN;
      // a gloo case's images/s: the mean of its two runs
      const both = (t: string) => (ips(t) + ips(`${t}_again`)) / 2;
      const overlapFirst = ips('gloo') / ips('gloo_no_overlap');
      const overlapSecond = ips('gloo_again') / ips('gloo_no_overlap_again');
      train.ratios = {
        ...(batch === 32
          ? {
              gloo_over_ddp: ddpIps ? round(both('gloo') / ddpIps, 3) : null,
              nats_over_ddp: ddpIps ? round(ips('nats') / ddpIps, 3) : null,
            }
          : {}),
        gloo_over_single_process: round(both('gloo') / ips('single_process'), 3),
        // the geometric mean of the two orders, and each order's own ratio
        gloo_over_gloo_no_overlap: round(Math.sqrt(overlapFirst * overlapSecond), 3),
        gloo_over_gloo_no_overlap_overlap_run_first: round(overlapFirst, 3),
        gloo_over_gloo_no_overlap_overlap_run_second: round(overlapSecond, 3),
        nats_over_single_process: round(ips('nats') / ips('single_process'), 3),
      };
      out[`training_batch_${batch}`] = train;
    }

    // ---- the bare all-reduce
    log(`collective: bare all-reduce of ${P} floats at ${sizes.join(', ')} processes (torch.distributed, ours)`);
    const reps = quick ? 10 : 30;
    const tdist = ddpBaseline(o, ['--allreduce', '--sizes', sizes.join(','), '--reps', String(reps)]);
    const ar: Json = { pytorch: tdist.allreduce ?? tdist };
    for (const n of sizes) {
      const gloo = await glooAllreduce(n, reps);
      const cfg = { synthetic: true, simulated: true, params: P, batchSize: n, samples: 1024, seed: 1, lr: 1e-3 };
      const nats = summarise(
        await runCluster(server, {
          n,
          run: `comm${n}`,
          configJson: JSON.stringify(cfg),
          batchSize: n,
          steps: quick ? 12 : 25,
          backend: 'cpu',
          threads: 1,
          transport: 'nats',
        }),
        3,
      );
      const pt = ((tdist.allreduce as Json | undefined)?.[`processes_${n}`] as Json | undefined)?.median_ms as number | undefined;
      ar[`processes_${n}`] = {
        gloo,
        nats_collective_ms: nats.collective_ms,
        gloo_over_pytorch: pt ? round((gloo.median_ms as number) / pt, 3) : null,
        nats_over_pytorch: pt ? round(nats.collective_ms / pt, 3) : null,
      };
    }
    out.allreduce = ar;

    // ---- scaling with simulated device compute
    const computes = [20, 5];
    log(`collective: simulated compute ${computes.join(', ')} ms, ${sizes.join(', ')} processes (torch.distributed, gloo, nats)`);
    const tsim = ddpBaseline(o, [
      ...computes.flatMap((c) => ['--simulated', String(c)]),
      '--sizes',
      sizes.join(','),
      '--steps',
      quick ? '15' : '30',
    ]);
    const sim: Json = { pytorch: tsim.simulated ?? tsim };
    for (const ms of computes) {
      const per: Json = {};
      for (const transport of ['gloo', 'nats'] as const) {
        for (const n of sizes) {
          const cfg = { synthetic: true, simulated: true, computeMs: ms, params: P, batchSize: n, samples: 1024, seed: 1, lr: 1e-3 };
          const s = summarise(
            await runCluster(server, {
              n,
              run: `sim${ms}-${transport}${n}`,
              configJson: JSON.stringify(cfg),
              batchSize: n,
              steps: quick ? 12 : 30,
              backend: 'cpu',
              threads: 1,
              transport,
            }),
            4,
          );
          per[`${transport}_processes_${n}`] = { step_ms: s.step_ms, allreduce_ms: s.allreduce_ms, efficiency: round(ms / s.step_ms, 3) };
        }
      }
      // our process group alone in the baseline's loop: what the worker's step adds is the difference
      for (const n of sizes) per[`gloo_loop_processes_${n}`] = await glooLoop(n, quick ? 15 : 30, ms);
      sim[`compute_${ms}ms`] = per;
    }
    out.simulated = sim;
  } finally {
    await server.close();
  }
  return out;
}
