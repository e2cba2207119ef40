/**
 * The cluster protocol end to end on a real nats-server, with the synthetic objective
 * (fast, exact): 1, 2 and 3 workers reach the parameters of a single replica trained
 * alone; a joiner mid-run gets the state; a NaN gradient stops the run loudly.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { SyntheticReplica, SYNTHETIC_DEFAULTS, type SyntheticConfig } from '../src/worker/synthetic.js';
import { startNats, syntheticCluster, type NatsServer } from './helpers/nats.js';
import { syntheticReference } from './helpers/synthetic.js';
import { maxRelDiff } from '../src/core/parity.js';
import { ProcessGroup } from '../src/worker/collective/process-group.js';
import { Buckets, bucketCuts } from '../src/worker/collective/c10d.js';
import { BUCKET_FLOATS } from '../src/protocol/transports.js';
import { paramInfos } from '../src/core/model/params.js';
import { trainConfig } from '../src/core/train/config.js';

const TRANSPORTS = ['nats', 'gloo'] as const;

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
          const ref = syntheticReference(cfg, 12);
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
        const ref = syntheticReference(cfg, 3);
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
        while (c.coordinator.step < 8) await sleep(20);
        const late = await c.addWorker();
        assert.ok((await c.coordinator.done).ok);
        await late.done;
        const ref = syntheticReference(cfg, 30);
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

describe('buckets', () => {
  it("are cut at parameter starts by DDP's rule: from the last parameter, closed once at least b floats", () => {
    const infos = paramInfos(trainConfig({}).model);
    const P = infos.at(-1)!.offset + infos.at(-1)!.size;
    const starts = infos.map((i) => i.offset);
    const cuts = bucketCuts(P, starts, BUCKET_FLOATS);
    assert.equal(cuts[0], P);
    assert.equal(cuts.at(-1), 0);
    for (let i = 1; i < cuts.length - 1; i++) {
      assert.ok(starts.includes(cuts[i]), `cut ${cuts[i]} is no parameter's start`);
      assert.ok(cuts[i - 1] - cuts[i] >= BUCKET_FLOATS, `bucket ${i - 1} holds ${cuts[i - 1] - cuts[i]} floats`);
      // closed at the first start that fills it: one parameter fewer and it would not be full
      const next = starts.find((s) => s > cuts[i])!;
      assert.ok(cuts[i - 1] - next < BUCKET_FLOATS, `bucket ${i - 1} was closed late`);
    }
    // the reference ScoreNet: the up-path through tconv4, then conv4's block, then the first
    // layers (what the backward pass finishes last: the one all-reduce left after it) in a small one
    const at = (name: string) => infos.find((i) => i.name === name)!.offset;
    assert.deepEqual(cuts, [P, at('tconv4.weight'), at('conv4.weight'), 0]);
    assert.ok(at('conv4.weight') < BUCKET_FLOATS);
    assert.deepEqual(bucketCuts(P, starts, P), [P, 0], 'one bucket when b is the whole vector');
    assert.deepEqual(bucketCuts(P, starts, 1), [P, ...starts.slice(1).reverse(), 0], 'one bucket per parameter when b is 1');
    assert.deepEqual(bucketCuts(10, [0], 3), [10, 0], 'no cut inside a parameter');
  });

  it('each goes out as soon as every float of it is ready, in order, the rest at the end; a non-finite one stops them', async () => {
    // parameters at 0, 3, 5, 9 of 12; buckets of at least 3: [9, 12), [5, 9), and the rest [0, 5)
    const cuts = bucketCuts(12, [0, 3, 5, 9], 3);
    assert.deepEqual(cuts, [12, 9, 5, 0]);
    const sent: number[][] = [];
    const b = new Buckets(async (v) => void sent.push([...v]), 12, cuts);
    b.grad.set([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    b.ready(0, 3); // the first parameter, out of order: its bucket still misses [3, 5)
    assert.equal(sent.length, 0);
    b.ready(9, 3);
    assert.deepEqual(sent, [[9, 10, 11]]);
    b.ready(5, 4);
    assert.deepEqual(sent.at(-1), [5, 6, 7, 8]);
    b.ready(3, 2);
    assert.deepEqual(sent.at(-1), [0, 1, 2, 3, 4]);
    assert.equal(b.works.length, 3);
    b.launch(true); // nothing left
    assert.equal(sent.length, 3);

    const partial = new Buckets(async (v) => void sent.push([...v]), 12, cuts);
    partial.ready(5, 4); // bucket 1 done, bucket 0 not: order holds it back
    assert.equal(partial.works.length, 0);
    partial.grad[10] = NaN;
    partial.launch(true);
    assert.ok(partial.bad && partial.works.length === 0, 'a non-finite bucket 0 sends nothing after it');
  });
});

describe('gloo against nats', () => {
  let server: NatsServer;
  before(async () => (server = await startNats()));
  after(async () => server?.close());

  const finalParams = async (n: number, transport: 'nats' | 'gloo', cfg: SyntheticConfig, bucketFloats?: number) => {
    const c = await syntheticCluster(server, n, cfg, { steps: 10, checksumEvery: 2, transport, bucketFloats });
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
      const bucketed = await finalParams(2, 'gloo', cfg, 7_000); // one bucket per "layer": cut at parameter starts only
      // (the first step all-reduces after the backward pass: its group forms meanwhile)
      assert.equal(calls, 2 * (1 + 9 * 4), 'four buckets per worker and step, one per synthetic layer');
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
