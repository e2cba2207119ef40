/**
 * Equivalence with single-process training, on the real Trainer (small ScoreNet, wasm):
 * N workers end K steps with exactly (bitwise) the parameters, Adam moments and EMA of
 * `scoreflow train --threads N`, because both cut the global batch into the same N
 * contiguous slices and add the slices' gradient sums in the same order. Against
 * `--threads 1` the difference is float re-association only (reported, and bounded).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { initBackend } from '../src/core/backend/index.js';
import { packagePath } from '../src/core/paths.js';
import { loadTrainingCheckpoint } from '../src/core/train/checkpoint.js';
import { configFromFlags } from '../src/cli/train.js';
import { trainerReplicas } from '../src/worker/trainer-replica.js';
import { startCluster, startNats, tempDir, type NatsServer } from './helpers/nats.js';
import { maxRelDiff } from '../src/core/parity.js';

const run = promisify(execFile);
// 100 images in batches of 12: the epoch's last step (step 8) has 4, so the run crosses a partial batch
const K = 10;
const FLAGS = [
  '--channels',
  '8,16,16,16',
  '--embed-dim',
  '16',
  '--data',
  'train',
  '--limit',
  '100',
  '--batch-size',
  '12',
  '--seed',
  '7',
  '--backend',
  'wasm',
];
type State = ReturnType<typeof loadTrainingCheckpoint>['state'];

async function reference(threads: number): Promise<State> {
  const out = tempDir();
  await run(process.execPath, [
    packagePath('bin', 'scoreflow.js'),
    'train',
    ...FLAGS,
    '--steps',
    String(K),
    '--threads',
    String(threads),
    '--out',
    out,
  ]);
  return loadTrainingCheckpoint(join(out, 'checkpoint.safetensors')).state;
}

describe('cluster = scoreflow train (real Trainer)', () => {
  let server: NatsServer;
  const refs = new Map<number, State>();
  before(async () => {
    server = await startNats();
    await initBackend('wasm');
    for (const t of [1, 2, 3]) refs.set(t, await reference(t));
  });
  after(async () => server?.close());

  const cases = [
    [1, 'nats'],
    [2, 'nats'],
    [3, 'nats'],
    [2, 'gloo'],
    [3, 'gloo'],
  ] as const;
  for (const [n, transport] of cases) {
    // Gloo's ring adds in another order than the rank order once there are more than two terms.
    const bitwise = transport === 'nats' || n <= 2;
    it(`${n} worker(s) over ${transport}: ${bitwise ? 'bitwise equal' : 'within float re-association of'} --threads ${n}, close to --threads 1`, async (t) => {
      const cfg = configFromFlags({
        seed: 7,
        batchSize: 12,
        lr: 1e-4,
        ema: 0.999,
        gradClip: 0,
        weighting: 'sigma2',
        sde: 've',
        sigmaMin: 0.01,
        sigmaMax: 22,
        channels: [8, 16, 16, 16],
        embedDim: 16,
        data: 'train',
        limit: 100,
        backend: 'wasm',
        out: '',
        resume: false,
        ckptEvery: 100,
      });
      const factory = trainerReplicas({ backend: 'wasm', threads: 1 });
      const outDir = tempDir();
      const c = await startCluster(server, n, JSON.stringify(cfg), cfg.batchSize, factory, {
        steps: K,
        checksumEvery: 2,
        outDir,
        transport,
      });
      try {
        const res = await c.coordinator.done;
        assert.ok(res.ok, res.reason);
        const got = loadTrainingCheckpoint(join(outDir, 'checkpoint.safetensors')).state;
        assert.equal(got.step, K);
        const ref = refs.get(n)!;
        if (bitwise)
          for (const k of ['params', 'm', 'v', 'ema'] as const)
            assert.deepEqual(got[k], ref[k], `${k} differs from scoreflow train --threads ${n}`);
        else {
          const dn = maxRelDiff(got.params, ref.params);
          t.diagnostic(`${n} workers over ${transport} vs --threads ${n}: max relative parameter difference ${dn.toExponential(2)}`);
          assert.ok(dn < 2e-3, `max relative difference to --threads ${n}: ${dn}`);
        }
        const d = maxRelDiff(got.params, refs.get(1)!.params);
        t.diagnostic(`${n} worker(s) vs --threads 1: max relative parameter difference ${d.toExponential(2)}`);
        // Adam divides by sqrt(v): on near-zero gradient elements, summation-order noise
        // becomes a full lr-sized step, so the bound is a few lr / max|param|, not 1e-7.
        assert.ok(d < 2e-3, `max relative difference ${d}`);
      } finally {
        await c.close();
        await factory.close();
      }
    });
  }
});
