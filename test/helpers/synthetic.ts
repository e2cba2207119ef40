/**
 * The synthetic objective's ground truth for the cluster tests: the same steps run straight
 * through on one replica, each over the whole global batch. Every cluster run, however it was
 * disturbed, must end there (to float association: the shards' sums are added in another order).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { maxRelDiff } from '../../src/core/parity.js';
import { SyntheticReplica, type SyntheticConfig } from '../../src/worker/synthetic.js';

/** `steps` steps of `cfg` on one replica, uninterrupted (no simulated compute time: the same numbers). */
export function syntheticReference(cfg: SyntheticConfig, steps: number): SyntheticReplica {
  const r = new SyntheticReplica(cfg);
  for (let k = 0; k < steps; k++) {
    const g = r.gradSumSync(k, 0, cfg.batchSize);
    r.apply(g.grad, g.count);
  }
  return r;
}

/** The run in `dir` checkpointed the reference's step, and its parameters within 1e-5 relative. */
export function assertCheckpointMatches(dir: string, ref: SyntheticReplica): void {
  const got = new SyntheticReplica(ref.config);
  got.importState(readFileSync(join(dir, 'checkpoint.safetensors')));
  assert.equal(got.step, ref.step);
  const d = maxRelDiff(got.params, ref.params);
  assert.ok(d < 1e-5, `max relative difference to the uninterrupted run ${d}`);
}
