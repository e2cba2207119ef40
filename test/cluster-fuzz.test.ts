/**
 * Hostile input: the decoder takes thousands of random and mutated messages and only ever
 * answers with a message or a WireError; the all-reduce rejects NaN, wrong lengths,
 * duplicates and strangers without touching its buffers; and a live run keeps going to
 * the exact result while thousands of such messages hit the coordinator and the workers.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connectNats } from '../src/coordinator/connect.js';
import { decode, encode, f32Bytes, Phase, subjects, WireError, type Bodies, type BodyKind } from '../src/coordinator/wire.js';
import { AllReduce } from '../src/worker/allreduce.js';
import { meanOf } from '../src/worker/allreduce.js';
import { SyntheticReplica, SYNTHETIC_DEFAULTS } from '../src/worker/synthetic.js';
import { Rng, Stream } from '../src/core/rng.js';
import { skipNoNats, startNats, syntheticCluster, type NatsServer } from './helpers/nats.js';

const H = { run: 'test', worker: 'fz1', step: 3, membershipEpoch: 65537 };
const TEMPLATES: { [K in BodyKind]: Bodies[K] } = {
  join: { host: 'h', pid: 1, device: -1, threads: 1, backend: 'cpu', hasState: false, nonce: 1 },
  welcome: { configJson: '{}', committed: 1, init: true, transfer: '', nonce: 1 },
  heartbeat: { busy: true, reconnected: false },
  plan: { epoch: 0, members: ['fz1', 'fz2'], shardStart: [0, 1, 2], globalBatch: 2, checksum: true, committed: 3, numParams: 8, chunkFloats: 4, commitEpoch: 1 },
  grad: { phase: Phase.REDUCE, owner: 0, senderRank: 1, offset: 0, data: f32Bytes(new Float32Array([1, 2, 3, 4]), 0, 4), lossSum: 1, count: 1 },
  ack: { lossMean: 1, checksum: 'abc', error: '', computeMs: 1, allreduceMs: 1, waitMs: 1, bytesSent: 1, bytesReceived: 1 },
  stateRequest: { donor: 'fz1', targets: [''], committed: 3, transfer: 't', commitEpoch: 1 },
  state: { transfer: 't', index: 0, count: 2, totalBytes: 10, data: new Uint8Array(5), sha256: 'x', checksum: 'y' },
  synced: { checksum: 'c', stepsPerEpoch: 3, numParams: 8, transfer: '', error: '' },
  hello: { committed: 2 },
  stop: { reason: 'x', ok: true, committed: 3, commitEpoch: 1 },
};
const templates = (Object.keys(TEMPLATES) as BodyKind[]).map((k) => encode(H, k, TEMPLATES[k] as never));

/** Random bytes, or a template with bytes flipped, cut, duplicated or appended. */
function hostile(rng: Rng, i: number): Uint8Array {
  const r = rng.nextU32() % 5;
  if (r === 0) return Uint8Array.from({ length: rng.nextU32() % 200 }, () => rng.nextU32() & 255);
  const t = Uint8Array.from(templates[i % templates.length]);
  if (r === 1) for (let k = 0; k < 1 + (rng.nextU32() % 4); k++) t[rng.nextU32() % t.length] = rng.nextU32() & 255;
  if (r === 2) return t.subarray(0, rng.nextU32() % t.length);
  if (r === 3) return Buffer.concat([t, t.subarray(rng.nextU32() % t.length)]);
  if (r === 4) t[rng.nextU32() % t.length] ^= 1 << (rng.nextU32() % 8);
  return t;
}

describe('hostile messages', () => {
  it('the decoder answers 20000 random and mutated messages with a message or a WireError', () => {
    const rng = new Rng(1, Stream.Test, 1);
    const reasons = new Map<string, number>();
    let ok = 0;
    for (let i = 0; i < 20_000; i++) {
      try {
        const env = decode(hostile(rng, i));
        assert.ok(env.kind in TEMPLATES);
        ok++;
      } catch (e) {
        assert.ok(e instanceof WireError, `decode threw ${(e as Error).stack}`);
        reasons.set(e.reason, (reasons.get(e.reason) ?? 0) + 1);
      }
    }
    assert.ok(ok > 1000 && (reasons.get('undecodable') ?? 0) > 1000, `decoded ${ok}, rejected ${[...reasons]}`);
  });

  it('the all-reduce rejects NaN, wrong lengths, duplicates and strangers, buffers untouched', async () => {
    const sent: Uint8Array[] = [];
    const ar = new AllReduce({ run: 'r', me: 'a', step: 0, mepoch: 1, members: ['a', 'b'], numParams: 8, chunkFloats: 4, globalBatch: 2, session: 0 }, (_s, b) => sent.push(b));
    const chunk = (worker: string, phase: Phase, offset: number, data: number[], extra: Partial<Bodies['grad']> = {}) =>
      decode(encode({ run: 'r', worker, step: 0, membershipEpoch: 1 }, 'grad', {
        phase, owner: phase === Phase.REDUCE ? 0 : 1, senderRank: 1, offset, data: f32Bytes(Float32Array.from(data), 0, data.length), lossSum: 1, count: phase === Phase.REDUCE ? 1 : 2, ...extra,
      })) as Parameters<AllReduce['accept']>[0];
    const expectReject = (env: Parameters<AllReduce['accept']>[0], reason: string) =>
      assert.throws(() => ar.accept(env, 1), (e: unknown) => e instanceof WireError && e.reason === reason);
    expectReject(chunk('b', Phase.REDUCE, 0, [1, NaN, 3, 4]), 'non_finite');
    expectReject(chunk('b', Phase.REDUCE, 0, [1, 2, 3]), 'bad_chunk');
    expectReject(chunk('b', Phase.REDUCE, 2, [1, 2, 3, 4]), 'bad_chunk');
    expectReject(chunk('b', Phase.GATHER, 4, [1, 2, Infinity, 4]), 'non_finite');
    expectReject(chunk('z', Phase.REDUCE, 0, [1, 2, 3, 4]), 'unknown_worker');
    expectReject(chunk('a', Phase.REDUCE, 0, [1, 2, 3, 4]), 'unexpected');
    expectReject(chunk('b', Phase.REDUCE, 0, [1, 2, 3, 4], { owner: 1 }), 'bad_chunk');
    ar.accept(chunk('b', Phase.REDUCE, 0, [1, 2, 3, 4]), 1);
    expectReject(chunk('b', Phase.REDUCE, 0, [1, 2, 3, 4]), 'bad_chunk'); // duplicate
    ar.accept(chunk('b', Phase.GATHER, 4, [5, 6, 7, 8]), 1);
    ar.setLocal({ grad: Float32Array.from([1, 1, 1, 1, 0, 0, 0, 0]), lossSum: 1, count: 1 });
    const r = await ar.done;
    assert.deepEqual([...r.mean], [1, 1.5, 2, 2.5, 5, 6, 7, 8]);
  });
});

describe('a live run under hostile traffic', { skip: skipNoNats }, () => {
  let server: NatsServer;
  before(async () => (server = await startNats()));
  after(async () => server?.close());

  it('finishes with the exact result; the junk is counted by reason', async () => {
    const cfg = { ...SYNTHETIC_DEFAULTS, params: 3000, batchSize: 8, computeMs: 5 };
    const c = await syntheticCluster(server, 2, cfg, { steps: 40, checksumEvery: 4, syncTimeoutMs: 1000 });
    const nc = await connectNats({ url: server.url });
    try {
      const rng = new Rng(2, Stream.Test, 2);
      const targets = [subjects.coord('test'), subjects.worker('test', 'w0'), subjects.worker('test', 'w1'), subjects.gather('test')];
      let i = 0;
      while (c.coordinator.step < 40 && i < 8000) {
        for (let k = 0; k < 50; k++, i++) nc.publish(targets[i % targets.length], hostile(rng, i));
        nc.publish(targets[0], encode({ ...H, run: 'other' }, 'heartbeat', TEMPLATES.heartbeat));
        nc.publish(targets[0], encode({ ...H, worker: 'nobody' }, 'ack', TEMPLATES.ack));
        await nc.flush();
        await new Promise((r) => setTimeout(r, 2));
      }
      const res = await c.coordinator.done;
      assert.ok(res.ok, res.reason);
      const ref = new SyntheticReplica(cfg);
      for (let k = 0; k < 40; k++) {
        const g = ref.gradSumSync(k, 0, cfg.batchSize);
        ref.apply(meanOf(g.grad, g.count));
      }
      for (const w of c.workers) {
        const p = (w.state as SyntheticReplica).params;
        for (let j = 0; j < p.length; j++) assert.ok(Math.abs(p[j] - ref.params[j]) <= 1e-5 * Math.max(1, Math.abs(ref.params[j])), `param ${j}`);
      }
      const rej = c.coordinator.telemetry.rejected;
      assert.ok(i > 1000, `only ${i} hostile messages were sent`);
      for (const reason of ['undecodable', 'other_run', 'unknown_worker'] as const) assert.ok((rej.get(reason) ?? 0) > 0, `no ${reason} counted: ${[...rej]}`);
      assert.ok(c.workers.every((w) => w.telemetry.rejectedTotal() > 0));
    } finally {
      await nc.close();
      await c.close();
    }
  });
});
