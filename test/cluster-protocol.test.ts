/**
 * The cluster protocol end to end on a real nats-server, with the synthetic objective
 * (fast, exact): 1, 2 and 3 workers reach the parameters of a single replica trained
 * alone; a joiner mid-run gets the state; a NaN gradient stops the run loudly.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { meanGradient } from '../src/core/train/step.js';
import { SyntheticReplica, SYNTHETIC_DEFAULTS, type SyntheticConfig } from '../src/worker/synthetic.js';
import { startNats, syntheticCluster, type NatsServer } from './helpers/nats.js';
import { maxRelDiff } from '../src/core/parity.js';
import { ProcessGroup } from '../src/worker/collective/process-group.js';

const TRANSPORTS = ['nats', 'gloo'] as const;

async function reference(cfg: SyntheticConfig, steps: number): Promise<SyntheticReplica> {
  const r = new SyntheticReplica(cfg);
  for (let k = 0; k < steps; k++) {
    const g = await r.gradSum(k, 0, cfg.batchSize);
    r.apply(meanGradient(g.grad, g.count));
  }
  return r;
}

for (const transport of TRANSPORTS) {
  describe(`cluster protocol (synthetic objective, transport ${transport})`, () => {
    let server: NatsServer;
    before(async () => (server = await startNats()));
    after(async () => server?.close());

    for (const n of [1, 2, 3]) {
      it(`${n} worker(s) end with the single-replica parameters`, async () => {
        const cfg = { ...SYNTHETIC_DEFAULTS, params: 5000, batchSize: 12, steps: 0 };
        const c = await syntheticCluster(server, n, cfg, { steps: 12, checksumEvery: 3, checkpointEvery: 5, transport });
        const used = new Set<string>();
        c.coordinator.telemetry.on('step', (r) => used.add(r.transport));
        try {
          const res = await c.coordinator.done;
          assert.ok(res.ok, res.reason);
          await Promise.all(c.workers.map((w) => w.done));
          const ref = await reference(cfg, 12);
          for (const w of c.workers) {
            const r = w.state as SyntheticReplica;
            assert.equal(r.step, 12);
            const d = maxRelDiff(r.params, ref.params);
            assert.ok(n === 1 ? d === 0 : d < 1e-5, `worker ${w.id}: max relative difference ${d}`);
          }
          assert.equal(c.coordinator.telemetry.rejectedTotal(), 0);
          assert.deepEqual([...used], [transport], 'the steps moved their gradients over another transport');
        } finally {
          await c.close();
        }
      });
    }

    it('uses chunks under max_payload for large vectors and stays exact', async () => {
      const cfg = { ...SYNTHETIC_DEFAULTS, params: 300_001, batchSize: 4 };
      const c = await syntheticCluster(server, 2, cfg, { steps: 3, checksumEvery: 1, transport });
      try {
        assert.ok((await c.coordinator.done).ok);
        await Promise.all(c.workers.map((w) => w.done));
        const ref = await reference(cfg, 3);
        const d = maxRelDiff((c.workers[1].state as SyntheticReplica).params, ref.params);
        assert.ok(d < 1e-5, `max relative difference ${d}`);
      } finally {
        await c.close();
      }
    });

    it('a worker joining mid-run receives the state before its first step', async () => {
      const cfg = { ...SYNTHETIC_DEFAULTS, computeMs: 20 };
      const c = await syntheticCluster(server, 1, cfg, { steps: 30, checksumEvery: 2, transport });
      try {
        while (c.coordinator.step < 8) await new Promise((r) => setTimeout(r, 20));
        const late = await c.addWorker();
        assert.ok((await c.coordinator.done).ok);
        await late.done;
        const ref = await reference(cfg, 30);
        assert.equal(late.state!.step, 30);
        const d = maxRelDiff((late.state as SyntheticReplica).params, ref.params);
        assert.ok(d < 1e-5, `max relative difference ${d}`);
        assert.equal(late.state!.checksum(), c.workers[0].state!.checksum());
      } finally {
        await c.close();
      }
    });

    it('a NaN gradient stops the run loudly, parameters untouched', async () => {
      const c = await syntheticCluster(server, 2, { nanAtStep: 4 }, { steps: 10, transport });
      try {
        const res = await c.coordinator.done;
        assert.equal(res.ok, false);
        assert.match(res.reason, /non-finite/);
        assert.equal(res.step, 4);
        for (const w of c.workers) assert.ok(w.state!.step <= 4);
      } finally {
        await c.close();
      }
    });
  });
}

describe('gloo against nats', () => {
  let server: NatsServer;
  before(async () => (server = await startNats()));
  after(async () => server?.close());

  const finalParams = async (n: number, transport: 'nats' | 'gloo', cfg: SyntheticConfig, bucketFloats?: number) => {
    const c = await syntheticCluster(server, n, cfg, { steps: 10, checksumEvery: 2, transport }, { bucketFloats });
    try {
      assert.ok((await c.coordinator.done).ok);
      await Promise.all(c.workers.map((w) => w.done));
      for (const w of c.workers) assert.equal(w.state!.checksum(), c.workers[0].state!.checksum(), 'replicas differ');
      return Float32Array.from((c.workers[0].state as SyntheticReplica).params);
    } finally {
      await c.close();
    }
  };

  it('2 workers: bitwise the same parameters (a sum of two is order-free); 3: within float re-association', async () => {
    const cfg = { ...SYNTHETIC_DEFAULTS, params: 100_003, batchSize: 12 };
    const [a, b] = [await finalParams(2, 'nats', cfg), await finalParams(2, 'gloo', cfg)];
    assert.ok(
      a.every((v, i) => Object.is(v, b[i])),
      `2 workers: max relative difference ${maxRelDiff(a, b)}`,
    );
    const [c, d] = [await finalParams(3, 'nats', cfg), await finalParams(3, 'gloo', cfg)];
    const diff = maxRelDiff(c, d);
    assert.ok(diff < 1e-5, `3 workers: max relative difference ${diff}`);
  });

  it('gloo in buckets during the backward pass against one all-reduce after it: 2 workers bitwise; 3 within float re-association', async (t) => {
    const cfg = { ...SYNTHETIC_DEFAULTS, params: 100_003, batchSize: 12 };
    // Count the all-reduces issued: with buckets, a step issues several.
    const original = ProcessGroup.prototype.allreduceSum;
    let calls = 0;
    ProcessGroup.prototype.allreduceSum = function (buf: Float32Array) {
      calls++;
      return original.call(this, buf);
    };
    try {
      const whole = await finalParams(2, 'gloo', cfg, 0);
      assert.equal(calls, 2 * 10, 'one all-reduce per worker and step');
      calls = 0;
      const bucketed = await finalParams(2, 'gloo', cfg, 7_000); // 15 buckets, cut across the 4 "layers"
      assert.ok(calls > 2 * 10 * 10, `${calls} all-reduces: buckets were not used`);
      assert.ok(
        whole.every((v, i) => Object.is(v, bucketed[i])),
        `2 workers: max relative difference ${maxRelDiff(whole, bucketed)}`,
      );
      const [c, d] = [await finalParams(3, 'gloo', cfg, 0), await finalParams(3, 'gloo', cfg, 7_000)];
      const diff = maxRelDiff(c, d);
      t.diagnostic(`3 workers, buckets against one all-reduce: max relative parameter difference ${diff.toExponential(2)} after 10 steps`);
      assert.ok(diff < 1e-5, `3 workers: max relative difference ${diff}`);
    } finally {
      ProcessGroup.prototype.allreduceSum = original;
    }
  });
});
