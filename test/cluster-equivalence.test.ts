/**
 * Equivalence with single-process training, on the real Trainer (small ScoreNet), per backend
 * (wasm, torch) and recipe (seed, fast): N workers with one compute thread each end K steps with
 * exactly (bitwise) the parameters, Adam moments and EMA of `scoreflow train --shards N`, which
 * cuts the global batch into the coordinator's N contiguous shards, computes each on one thread
 * and adds the shards' gradient sums in rank order, as the nats transport does (and Gloo, for
 * N = 2). Against `--shards 1` the difference is float re-association only (reported, and
 * bounded); so is Gloo's for N = 3, whose ring adds in another order. On wasm, `--threads N` is
 * `--shards N` (one single-threaded wasm instance per thread); on torch it is not (intra-op
 * threads over the whole batch).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { initBackend } from '../src/core/backend/index.js';
import { packagePath } from '../src/core/paths.js';
import { loadTrainingCheckpoint } from '../src/core/train/checkpoint.js';
import { trainerReplicas } from '../src/worker/trainer-replica.js';
import { tempDir, TINY_NET } from './helpers/cli.js';
import { startCluster, startNats, type NatsServer } from './helpers/nats.js';
import { maxRelDiff } from '../src/core/parity.js';

const run = promisify(execFile);
// 100 images in batches of 12: the epoch's last step (step 8) has 4, so a 10-step run crosses a partial batch
const FLAGS = [...TINY_NET, '--data', 'train', '--limit', '100', '--batch-size', '12', '--seed', '7'];
type Checkpoint = ReturnType<typeof loadTrainingCheckpoint>;
type State = Checkpoint['state'];

/** `scoreflow train` with these flags for `steps` steps: its checkpoint. */
async function singleProcess(backend: string, recipe: string, steps: number, flags: string[]): Promise<Checkpoint> {
  const out = tempDir();
  const args = ['train', ...FLAGS, '--backend', backend, '--recipe', recipe, '--steps', String(steps), ...flags, '--out', out];
  await run(process.execPath, [packagePath('bin', 'scoreflow.js'), ...args]);
  return loadTrainingCheckpoint(join(out, 'checkpoint.safetensors'));
}

function assertBitwise(got: State, ref: State, what: string): void {
  for (const k of ['params', 'm', 'v', 'ema'] as const) assert.deepEqual(got[k], ref[k], `${k} differs from ${what}`);
}

const BACKENDS = ['wasm', 'torch'] as const;
const RECIPES = [
  // seed: 10 steps (the figures the README quotes), N = 1, 2, 3; fast: 3 steps, N = 2, 3, its
  // schedule ending in a cool-down over the last 2 (the workers take it from the run's config)
  {
    recipe: 'seed',
    steps: 10,
    flags: [],
    cases: [
      [1, 'nats'],
      [2, 'nats'],
      [3, 'nats'],
      [2, 'gloo'],
      [3, 'gloo'],
    ],
  },
  {
    recipe: 'fast',
    steps: 3,
    flags: ['--lr-cooldown', '2'],
    cases: [
      [2, 'nats'],
      [3, 'nats'],
      [2, 'gloo'],
    ],
  },
] as const;

for (const backend of BACKENDS) {
  describe(`cluster = scoreflow train --shards N (${backend}, real Trainer)`, () => {
    let server: NatsServer;
    const refs = new Map<string, Checkpoint>();
    const ref = (recipe: string, n: number) => refs.get(`${recipe}/${n}`)!;
    before(async () => {
      server = await startNats();
      // The workers below run in this process, on one compute thread each (as `--threads 1`).
      await initBackend(backend, { threads: 1, log: () => {} });
      for (const { recipe, steps, flags, cases } of RECIPES) {
        for (const n of new Set([1, ...cases.map(([k]) => k)])) {
          if (recipe === 'fast' && n === 1) continue;
          refs.set(`${recipe}/${n}`, await singleProcess(backend, recipe, steps, [...flags, '--shards', String(n)]));
        }
      }
    });
    after(async () => server?.close());

    for (const { recipe, steps, cases } of RECIPES) {
      for (const [n, transport] of cases) {
        // Gloo's ring adds in another order than the rank order once there are more than two terms.
        const bitwise = transport === 'nats' || n <= 2;
        const title = `${recipe}: ${n} worker(s) over ${transport}, ${steps} steps: ${bitwise ? 'bitwise equal to' : 'within float re-association of'} --shards ${n}`;
        it(title, async (t) => {
          const reference = ref(recipe, n);
          assert.equal(reference.config.lrCooldownSteps, recipe === 'fast' ? 2 : 0);
          const factory = trainerReplicas({ backend, threads: 1 });
          const outDir = tempDir();
          const c = await startCluster(server, n, JSON.stringify(reference.config), reference.config.batchSize, factory, {
            steps,
            checksumEvery: 2,
            outDir,
            transport,
          });
          try {
            const res = await c.coordinator.done;
            assert.ok(res.ok, res.reason);
            const got = loadTrainingCheckpoint(join(outDir, 'checkpoint.safetensors')).state;
            assert.equal(got.step, steps);
            if (bitwise) assertBitwise(got, reference.state, `scoreflow train --shards ${n}`);
            else {
              const dn = maxRelDiff(got.params, reference.state.params);
              t.diagnostic(`${n} workers over ${transport} vs --shards ${n}: max relative parameter difference ${dn.toExponential(2)}`);
              assert.ok(dn < 2e-3, `max relative difference to --shards ${n}: ${dn}`);
            }
            if (recipe === 'seed') {
              const d = maxRelDiff(got.params, ref(recipe, 1).state.params);
              t.diagnostic(`${n} worker(s) vs --shards 1: max relative parameter difference ${d.toExponential(2)}`);
              // Adam divides by sqrt(v): on near-zero gradient elements, summation-order noise
              // becomes a full lr-sized step, so the bound is a few lr / max|param|, not 1e-7.
              assert.ok(d < 2e-3, `max relative difference ${d}`);
            }
          } finally {
            await c.close();
            await factory.close();
          }
        });
      }
    }

    it('--shards 2 --threads 1 (the shards one after another, in this thread) is --shards 2 (on two threads), fast', async () => {
      const seq = await singleProcess(backend, 'fast', 3, [...RECIPES[1].flags, '--shards', '2', '--threads', '1']);
      assertBitwise(seq.state, ref('fast', 2).state, '--shards 2');
    });

    if (backend === 'wasm')
      it('wasm: --threads N is --shards N (one single-threaded wasm instance per thread), seed, N = 2, 3', async () => {
        for (const n of [2, 3])
          assertBitwise((await singleProcess(backend, 'seed', 10, ['--threads', String(n)])).state, ref('seed', n).state, `--shards ${n}`);
      });
  });
}
