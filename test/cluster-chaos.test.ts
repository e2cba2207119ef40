/**
 * Chaos: `coordinator start --gpus 2` (gloo between its spawned workers, a checkpoint every 5
 * steps) while random kill -9s hit the coordinator (then started again on its run directory,
 * as a Job controller would) and its spawned workers (restarted by the coordinator). The run
 * must finish by itself, log every step exactly once, and end with the state of an
 * undisturbed run bit for bit: every step is replayed here with the number of workers
 * train.jsonl says computed it (a step computed by one worker sums its shards in another order
 * than one computed by two, so that is the only freedom); when no kill changed the
 * membership of a committed step, that replay is exactly the undisturbed 2-worker run.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { rangeBounds } from '../src/protocol/chunking.js';
import { SyntheticReplica, SYNTHETIC_DEFAULTS, type SyntheticConfig } from '../src/worker/synthetic.js';
import { tempDir } from './helpers/cli.js';
import { logged, loggedEntries, pidsOfWorker, range, startBin, until, type Proc } from './helpers/procs.js';

const SYN: SyntheticConfig = { ...SYNTHETIC_DEFAULTS, params: 20_000, batchSize: 12, computeMs: 30 };
const STEPS = 60;
const KILLS = 4;

/** The state after `workers.length` steps, step k's gradient summed over workers[k] contiguous shards in rank order. */
function replay(workers: number[]): SyntheticReplica {
  const r = new SyntheticReplica(SYN);
  for (let k = 0; k < workers.length; k++) {
    const b = rangeBounds(SYN.batchSize, workers[k]);
    let sum: Float32Array | undefined;
    for (let rank = 0; rank < workers[k]; rank++) {
      const g = r.gradSumSync(k, b[rank], b[rank + 1]).grad;
      if (!sum) sum = g;
      else for (let j = 0; j < g.length; j++) sum[j] += g[j];
    }
    r.apply(sum!, SYN.batchSize);
  }
  return r;
}

describe('chaos', () => {
  const procs: Proc[] = [];
  after(() => {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  });

  it(`${KILLS} random kill -9s of the coordinator and its spawned workers during a gloo run: it finishes by itself, every step once, bit-exact`, async () => {
    const dir = tempDir();
    const args = [
      'start',
      '--gpus',
      '2',
      '--run',
      'chaos',
      '--out',
      dir,
      '--steps',
      String(STEPS),
      '--batch-size',
      String(SYN.batchSize),
      '--synthetic',
      JSON.stringify(SYN),
      '--transport',
      'gloo',
      '--ckpt-every',
      '5',
      '--checksum-every',
      '3',
      '--heartbeat-timeout',
      '2000',
      '--max-restarts',
      String(KILLS),
      '--backend',
      'cpu',
    ];
    const startCoordinator = () => {
      const p = startBin('coordinator', args);
      procs.push(p);
      return p;
    };
    let c = startCoordinator();
    const events: string[] = [];
    let progress = 0;
    for (let k = 0; k < KILLS; k++) {
      // a few steps past the last event (a restarted coordinator first resumes from its checkpoint)
      const at = progress + 3 + Math.floor(Math.random() * 6);
      await until(
        () => Math.max(0, ...logged(dir)) >= at || c.child.exitCode !== null,
        120_000,
        `step ${at} (events: ${events.join(', ')})`,
      );
      if (c.child.exitCode !== null) break; // finished early
      await sleep(Math.random() * 100);
      const victim = ['coordinator', 'chaos-w0', 'chaos-w1'][Math.floor(Math.random() * 3)];
      if (victim === 'coordinator') {
        c.child.kill('SIGKILL');
        await c.exited;
        c = startCoordinator();
      } else {
        const pids = pidsOfWorker(victim);
        for (const pid of pids) process.kill(pid, 'SIGKILL');
        if (!pids.length) {
          events.push(`${victim} not running at step ${at}`);
          continue;
        }
      }
      events.push(`${victim} at step ${at}`);
      progress = at;
    }
    const code = await Promise.race([c.exited, sleep(180_000).then(() => 'timeout')]);
    assert.equal(code, 0, `events: ${events.join(', ')}\n${c.output()}`);
    const entries = loggedEntries(dir);
    assert.deepEqual(
      entries.map((e) => e.step),
      range(0, STEPS),
      `every step once (events: ${events.join(', ')})`,
    );
    const got = readFileSync(join(dir, 'checkpoint.safetensors'));
    const ref = replay(entries.map((e) => e.workers));
    assert.ok(Buffer.from(ref.exportState()).equals(got), `the final state differs from the replay (events: ${events.join(', ')})`);
    if (entries.every((e) => e.workers === 2))
      assert.ok(Buffer.from(replay(entries.map(() => 2)).exportState()).equals(got), 'not the undisturbed run');
  });
});
