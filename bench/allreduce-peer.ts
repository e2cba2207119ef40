/**
 * One rank of the bare c10d all-reduce benchmark (bench/collective.ts starts N of them):
 *   node dist/bench/allreduce-peer.js RANK WORLD STORE_PORT NUMEL REPS
 * joins a Gloo group at 127.0.0.1:STORE_PORT, all-reduces NUMEL floats REPS times after a
 * warm-up, each after a one-float all-reduce that lines the ranks up (a barrier), checks the
 * sum, and prints {median_ms, min_ms} of its own timings as one JSON line.
 */
import { ProcessGroup } from '../src/worker/collective/process-group.js';

const [rank, world, port, numel, reps] = process.argv.slice(2).map(Number);
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
const barrier = new Float32Array(1);
const times: number[] = [];
for (let i = 0; i < reps + 3; i++) {
  buf.fill(rank + 1);
  await pg.allreduceSum(barrier);
  const t0 = performance.now();
  await pg.allreduceSum(buf);
  if (i >= 3) times.push(performance.now() - t0);
}
const expected = (world * (world + 1)) / 2;
if (buf[0] !== expected || buf[numel - 1] !== expected) throw new Error(`sum is ${buf[0]}, expected ${expected}`);
times.sort((a, b) => a - b);
process.stdout.write(JSON.stringify({ rank, median_ms: times[Math.floor(times.length / 2)], min_ms: times[0] }) + '\n');
pg.close();
