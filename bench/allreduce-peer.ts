/**
 * One rank of the bare c10d all-reduce benchmark (bench/collective.ts starts N of them):
 *   node dist/bench/allreduce-peer.js RANK WORLD STORE_PORT NUMEL REPS [COMPUTE_MS]
 * joins a Gloo group at 127.0.0.1:STORE_PORT and checks one sum. Without COMPUTE_MS it
 * all-reduces NUMEL floats REPS times after a warm-up, each after a one-float all-reduce that
 * lines the ranks up (a barrier), and prints {median_ms, min_ms} of its own timings. With
 * COMPUTE_MS it runs torch.distributed's simulated loop of reference/ddp_baseline.py instead,
 * step for step (sleep COMPUTE_MS, all-reduce; a step is the time from one end to the next, after
 * the same warm-up), and prints {steps_ms}, its own durations, for the bench to take the slowest
 * rank's per step: our process group in exactly the baseline's loop, with no worker around it.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { ProcessGroup } from '../src/worker/collective/process-group.js';

const [rank, world, port, numel, reps, computeMs] = process.argv.slice(2).map(Number);
const pg = await ProcessGroup.create({
  backend: 'gloo',
  storeHost: '127.0.0.1',
  storePort: port,
  prefix: `bench-${world}`,
  rank,
  worldSize: world,
  timeoutMs: 60_000,
});
const buf = new Float32Array(numel);
const expected = (world * (world + 1)) / 2;
const checkSum = () => {
  if (buf[0] !== expected || buf[numel - 1] !== expected) throw new Error(`sum is ${buf[0]}, expected ${expected}`);
};

/** The bare all-reduce: this rank's median and min over `reps`, each after a barrier. */
async function bare(): Promise<object> {
  const barrier = new Float32Array(1);
  const times: number[] = [];
  for (let i = 0; i < reps + 3; i++) {
    buf.fill(rank + 1);
    await pg.allreduceSum(barrier);
    const t0 = performance.now();
    await pg.allreduceSum(buf);
    if (i >= 3) times.push(performance.now() - t0);
  }
  checkSum();
  times.sort((a, b) => a - b);
  return { median_ms: times[Math.floor(times.length / 2)], min_ms: times[0] };
}

/** ddp_baseline.py's simulated loop: this rank's step durations. */
async function simulated(ms: number): Promise<object> {
  buf.fill(rank + 1);
  await pg.allreduceSum(buf);
  checkSum();
  buf.fill(0); // (sums of zeros stay finite however many steps)
  const warmup = 3; // SIMULATED_WARMUP there
  const ends: number[] = [];
  for (let i = 0; i < warmup + reps + 1; i++) {
    await sleep(ms); // the device computing; this process's CPU is idle meanwhile
    await pg.allreduceSum(buf);
    ends.push(performance.now());
  }
  return { steps_ms: ends.slice(warmup).flatMap((e, i, a) => (i ? [e - a[i - 1]] : [])) };
}

const result = computeMs === undefined ? await bare() : await simulated(computeMs);
process.stdout.write(JSON.stringify({ rank, ...result }) + '\n');
pg.close();
