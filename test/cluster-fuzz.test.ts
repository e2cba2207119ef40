/**
 * Hostile input: the decoder takes thousands of random and mutated messages and only ever
 * answers with a message or a WireError; the all-reduce rejects NaN, wrong lengths,
 * duplicates and strangers without touching its buffers; and a live run keeps going to
 * the exact result while thousands of such messages hit the coordinator and the workers.
 */
import { buildFingerprint } from '../src/cluster/fingerprint.js';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { connectNats } from '../src/cluster/connect.js';
import { toLEBytes } from '../src/core/io/endian.js';
import { packagePath } from '../src/core/paths.js';
import { decode, encode, encodeGrad, Phase, PROTOCOL_VERSION, WireError, type Bodies, type BodyKind } from '../src/protocol/envelope.js';
import { ReplayGuard, Sender } from '../src/protocol/sequence.js';
import { subjects } from '../src/protocol/subjects.js';
import { AllReduce } from '../src/worker/collective/nats.js';
import { SyntheticReplica, SYNTHETIC_DEFAULTS } from '../src/worker/synthetic.js';
import { Rng, Stream } from '../src/core/rng.js';
import { tempDir } from './helpers/cli.js';
import { startNats, syntheticCluster, type NatsServer } from './helpers/nats.js';
import { syntheticReference } from './helpers/synthetic.js';
import { maxRelDiff } from '../src/core/parity.js';

const H = { run: 'test', worker: 'fz1', step: 3, membershipEpoch: 65537 };
const TEMPLATES: { [K in BodyKind]: Bodies[K] } = {
  join: {
    host: 'h',
    pid: 1,
    device: -1,
    threads: 1,
    backend: 'cpu',
    hasState: false,
    nonce: 1,
    transports: ['nats', 'gloo'],
    dataHost: '127.0.0.1',
    storePort: 4000,
    transportNote: '',
    build: buildFingerprint(),
  },
  welcome: { configJson: '{}', committed: 1, init: true, transfer: '', nonce: 1, keep: false },
  heartbeat: { busy: true, reconnected: false },
  plan: {
    members: ['fz1', 'fz2'],
    numParams: 8,
    chunkFloats: 4,
    transport: 'nats',
    store: '',
    until: 9,
    batchSize: 2,
    stepsPerEpoch: 3,
    lastBatch: 2,
    commitEvery: 2,
    checksumEvery: 2,
    bucketFloats: 3,
  },
  commit: { step: 4 },
  grad: { phase: Phase.REDUCE, owner: 0, senderRank: 1, offset: 0, data: toLEBytes(new Float32Array([1, 2, 3, 4])), count: 1 },
  ack: {
    lossSum: 1,
    count: 1,
    checksum: 'abc',
    error: '',
    computeMs: 1,
    allreduceMs: 1,
    waitMs: 1,
    bytesSent: 1,
    bytesReceived: 1,
    stepMs: 2,
  },
  stateRequest: { donor: 'fz1', targets: [''], step: 3, transfer: 't' },
  state: { transfer: 't', index: 0, count: 2, totalBytes: 10, data: new Uint8Array(5), sha256: 'x', checksum: 'y' },
  synced: { checksum: 'c', stepsPerEpoch: 3, numParams: 8, transfer: '', error: '', lastBatch: 2 },
  hello: { committed: 2 },
  stop: { reason: 'x', ok: true, nonce: 0 },
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
    const ar = new AllReduce(
      {
        run: 'r',
        me: 'a',
        step: 0,
        membershipEpoch: 1,
        members: ['a', 'b'],
        numParams: 8,
        chunkFloats: 4,
        globalBatch: 2,
        session: 0,
        shardStart: [0, 1, 2],
        store: '',
        paramStarts: [0],
        bucketFloats: 0,
      },
      (_s, b) => sent.push(b),
    );
    const chunk = (worker: string, phase: Phase, offset: number, data: number[], extra: Partial<Bodies['grad']> = {}) =>
      decode(
        encode({ run: 'r', worker, step: 0, membershipEpoch: 1 }, 'grad', {
          phase,
          owner: phase === Phase.REDUCE ? 0 : 1,
          senderRank: 1,
          offset,
          data: toLEBytes(Float32Array.from(data)),
          count: phase === Phase.REDUCE ? 1 : 2,
          ...extra,
        }),
      ) as Parameters<AllReduce['accept']>[0];
    const expectReject = (env: Parameters<AllReduce['accept']>[0], reason: string) =>
      assert.throws(
        () => ar.accept(env, 1),
        (e: unknown) => e instanceof WireError && e.reason === reason,
      );
    expectReject(chunk('b', Phase.REDUCE, 0, [1, NaN, 3, 4]), 'non_finite');
    expectReject(chunk('b', Phase.REDUCE, 0, [1, 2, 3]), 'bad_chunk');
    expectReject(chunk('b', Phase.REDUCE, 2, [1, 2, 3, 4]), 'bad_chunk');
    expectReject(chunk('b', Phase.GATHER, 4, [1, 2, Infinity, 4]), 'non_finite');
    expectReject(chunk('z', Phase.REDUCE, 0, [1, 2, 3, 4]), 'unknown_worker');
    expectReject(chunk('a', Phase.REDUCE, 0, [1, 2, 3, 4]), 'unexpected');
    expectReject(chunk('b', Phase.REDUCE, 0, [1, 2, 3, 4], { owner: 1 }), 'bad_chunk');
    expectReject(chunk('b', Phase.REDUCE, 0, [1, 2, 3, 4], { count: 2 }), 'bad_chunk'); // rank 1's shard has 1 sample
    expectReject(chunk('b', Phase.GATHER, 4, [1, 2, 3, 4], { count: 1 }), 'bad_chunk'); // a gather is for the whole batch
    ar.accept(chunk('b', Phase.REDUCE, 0, [1, 2, 3, 4]), 1);
    expectReject(chunk('b', Phase.REDUCE, 0, [1, 2, 3, 4]), 'duplicate');
    ar.accept(chunk('b', Phase.GATHER, 4, [5, 6, 7, 8]), 1);
    ar.setLocal({ grad: Float32Array.from([1, 1, 1, 1, 0, 0, 0, 0]), lossSum: 1, count: 1 });
    expectReject(chunk('b', Phase.GATHER, 4, [5, 6, 7, 8]), 'duplicate');
    const r = await ar.done;
    assert.deepEqual([...r], [2, 3, 4, 5, 5, 6, 7, 8]); // our range: the sum of both; b's range: as b gathered it
  });
});

describe('gradient chunks', () => {
  const ctx = (me: string, extra: Partial<ConstructorParameters<typeof AllReduce>[0]> = {}) => ({
    run: 'r',
    me,
    step: 0,
    membershipEpoch: 1,
    members: ['a', 'b', 'c'],
    numParams: 10,
    chunkFloats: 2,
    globalBatch: 6,
    session: 9,
    shardStart: [0, 2, 4, 6],
    store: '',
    paramStarts: [0],
    bucketFloats: 0,
    ...extra,
  });
  const frame = (worker: string, body: Partial<Bodies['grad']> & { data: Uint8Array }) =>
    encode({ run: 'r', worker, step: 0, membershipEpoch: 1, session: 9 }, 'grad', {
      phase: Phase.REDUCE,
      owner: 0,
      senderRank: 1,
      offset: 0,
      count: 2,
      ...body,
    });
  const floats = (...xs: number[]) => toLEBytes(Float32Array.from(xs));

  it('round-trip, also from an unaligned buffer; the floats start 4-aligned; version and truncation are rejected', () => {
    for (const worker of ['b', 'worker-with-a-longer-id', '']) {
      for (const n of [1, 2, 3, 200, 40_000]) {
        const f = frame(worker, { data: toLEBytes(Float32Array.from({ length: n }, (_, i) => i - 1.5)) });
        const env = decode(f) as Parameters<AllReduce['accept']>[0];
        assert.equal(
          env.body.data.byteOffset % 4,
          0,
          `worker ${JSON.stringify(worker)}, ${n} floats: data at byte ${env.body.data.byteOffset}`,
        );
        assert.equal(f.byteLength - env.body.data.byteLength, env.body.data.byteOffset, 'the floats are the last bytes');
      }
    }
    const f = frame('b', { data: floats(1.5, -2) });
    for (const shift of [0, 1, 2, 3]) {
      const buf = new Uint8Array(f.byteLength + shift);
      buf.set(f, shift);
      const env = decode(buf.subarray(shift));
      assert.equal(env.kind, 'grad');
      assert.deepEqual(
        { ...env, body: { ...env.body, data: [...new Float32Array(Uint8Array.from(env.body.data).buffer)] } },
        {
          version: PROTOCOL_VERSION,
          run: 'r',
          worker: 'b',
          step: 0,
          membershipEpoch: 1,
          session: 9,
          origin: 0,
          seq: 0,
          kind: 'grad',
          body: {
            phase: Phase.REDUCE,
            owner: 0,
            senderRank: 1,
            offset: 0,
            count: 2,
            data: [1.5, -2],
            pad: (env.body as unknown as { pad: Uint8Array }).pad,
          },
        },
      );
    }
    const reason = (b: Uint8Array) => {
      try {
        decode(b);
        return 'ok';
      } catch (e) {
        return (e as WireError).reason;
      }
    };
    const v2 = Uint8Array.from(f);
    assert.deepEqual([v2[0], v2[1]], [0x08, PROTOCOL_VERSION]); // field 1 (version), varint
    v2[1] = 2;
    assert.equal(reason(v2), 'version');
    assert.equal(reason(f.subarray(0, f.byteLength - 1)), 'undecodable');
    assert.equal(reason(f.subarray(0, 20)), 'undecodable');
    assert.equal(reason(Buffer.concat([f, Uint8Array.of(0x0f)])), 'undecodable'); // wire type 7 does not exist
  });

  it('a chunk is a protobuf Envelope that protoc (a second decoder) reads field for field', () => {
    const f = encodeGrad(
      { run: 'r1', worker: 'w-7', step: 300, membershipEpoch: 65538, session: 4_000_000_000, origin: 1764625000123456, seq: 77 },
      { phase: Phase.GATHER, owner: 2, senderRank: 2, offset: 32768, count: 32 },
      Float32Array.from([0, 1.5, -2, 3.25, 1e-30]),
      1,
      3,
    );
    const r = spawnSync('protoc', ['--decode=scoreflow.v1.Envelope', '-I', packagePath('proto'), 'scoreflow.proto'], {
      input: f,
      encoding: 'latin1',
    });
    assert.equal(r.status, 0, `protoc: ${r.error?.message ?? r.stderr}`);
    const text = r.stdout;
    for (const line of [
      `version: ${PROTOCOL_VERSION}`,
      'run: "r1"',
      'worker: "w-7"',
      'step: 300',
      'membership_epoch: 65538',
      'session: 4000000000',
      'origin: 1764625000123456',
      'seq: 77',
      'phase: GATHER',
      'owner: 2',
      'sender_rank: 2',
      'offset: 32768',
      'count: 32',
    ])
      assert.ok(text.includes(line), `protoc output lacks ${line}:\n${text}`);
    // data: 1.5, -2, 3.25 as little-endian float32, which protoc prints as escaped bytes
    const data = /data: "((?:[^"\\]|\\.)*)"/.exec(text)?.[1];
    assert.ok(data, text);
    const bytes = Buffer.from(
      data.replace(/\\(\d{3}|.)/g, (_, e: string) =>
        /^\d{3}$/.test(e) ? String.fromCharCode(parseInt(e, 8)) : (({ n: '\n', r: '\r', t: '\t' } as Record<string, string>)[e] ?? e),
      ),
      'latin1',
    );
    assert.deepEqual([...new Float32Array(Uint8Array.from(bytes).buffer)], [1.5, -2, 3.25]);
  });

  it('owners add contributions in rank order whatever the arrival order: bitwise the sequential sum', async () => {
    const rng = new Rng(3, Stream.Test, 3);
    const P = 10;
    const grads = [0, 1, 2].map(() =>
      Float32Array.from({ length: P }, () => (rng.nextU32() / 2 ** 32 - 0.5) * 10 ** ((rng.nextU32() % 9) - 4)),
    );
    const sum = Float32Array.from(grads[0]);
    for (const g of grads.slice(1)) for (let i = 0; i < P; i++) sum[i] += g[i];
    const expected = sum;
    for (let trial = 0; trial < 30; trial++) {
      const members = ['a', 'b', 'c'];
      const bus: { to: string; bytes: Uint8Array }[] = [];
      const ars = members.map(
        (m) => new AllReduce(ctx(m, { shardStart: [0, 2, 4, 6] }), (to, bytes) => bus.push({ to, bytes: Uint8Array.from(bytes) })),
      );
      const locals = [0, 1, 2].sort(() => (rng.nextU32() & 1) - 0.5);
      let k = 0;
      for (;;) {
        // Deliver a random pending message, or set the next local gradient.
        if (bus.length && (k >= 3 || rng.nextU32() % 3 !== 0)) {
          const { to, bytes } = bus.splice(rng.nextU32() % bus.length, 1)[0];
          const env = decode(bytes) as Parameters<AllReduce['accept']>[0];
          members.forEach((m, r) => {
            if (to === subjects.gather('r') ? m !== env.worker : to === subjects.worker('r', m)) ars[r].accept(env, bytes.byteLength);
          });
        } else if (k < 3) {
          const r = locals[k++];
          ars[r].setLocal({ grad: grads[r], lossSum: r, count: 2 });
        } else break;
      }
      for (const ar of ars) {
        const res = await ar.done;
        assert.deepEqual([...res], [...expected]);
      }
    }
  });

  it('counts that disagree with the shard or between chunks are rejected, buffers untouched', async () => {
    const ar = new AllReduce(ctx('a', { members: ['a', 'b'], numParams: 4, globalBatch: 3, shardStart: [0, 1, 3] }), () => {});
    const env = (offset: number, count: number, data: Uint8Array) =>
      decode(frame('b', { offset, count, data })) as Parameters<AllReduce['accept']>[0];
    const expectReject = (e: Parameters<AllReduce['accept']>[0], r: string) =>
      assert.throws(
        () => ar.accept(e, 1),
        (x: unknown) => x instanceof WireError && x.reason === r,
      );
    expectReject(env(0, 1, floats(1, 1)), 'bad_chunk'); // rank 1's shard has 2 samples
    ar.accept(env(0, 2, floats(1, 1)), 1);
    expectReject(env(0, 2, floats(1, 1)), 'duplicate');
    ar.setLocal({ grad: Float32Array.from([2, 2, 0, 0]), lossSum: 2, count: 1 });
    ar.accept(decode(frame('b', { phase: Phase.GATHER, owner: 1, offset: 2, count: 3, data: floats(5, 6) })) as never, 1);
    const r = await ar.done;
    assert.deepEqual([...r], [3, 3, 5, 6]);
  });

  it('20000 mutated frames: the decoder and the all-reduce answer only with a result or a WireError', () => {
    const rng = new Rng(4, Stream.Test, 4);
    const seeds = [
      // a owns [0, 3) (chunks at 0 and 2), b owns [3, 6) (chunks at 3 and 5)
      frame('b', { offset: 0, owner: 0, data: floats(1, 2) }),
      frame('b', { phase: Phase.GATHER, owner: 1, offset: 3, count: 6, data: floats(3, 4) }),
      encodeGrad(
        { run: 'r', worker: 'c', step: 0, membershipEpoch: 1, session: 9 },
        { phase: Phase.REDUCE, owner: 0, senderRank: 2, offset: 2, count: 2 },
        Float32Array.from([7, 8, 9]),
        1,
        1,
      ),
    ];
    let ar = new AllReduce(ctx('a'), () => {});
    const outcomes = new Map<string, number>();
    for (let i = 0; i < 20_000; i++) {
      if (i % 200 === 0) ar = new AllReduce(ctx('a'), () => {});
      const t = Uint8Array.from(seeds[i % seeds.length]);
      const r = rng.nextU32() % 4;
      let m: Uint8Array = t;
      // Mostly header bytes: that is where a decoder can go wrong.
      if (r === 0) for (let k = 0; k < 1 + (rng.nextU32() % 3); k++) t[rng.nextU32() % Math.min(64, t.length)] = rng.nextU32() & 255;
      if (r === 1) m = t.subarray(0, rng.nextU32() % t.length);
      if (r === 2) m = Buffer.concat([t, t.subarray(rng.nextU32() % t.length)]);
      if (r === 3) t[rng.nextU32() % t.length] ^= 1 << (rng.nextU32() % 8);
      let outcome = 'accepted';
      try {
        const env = decode(m);
        if (env.kind !== 'grad') throw new WireError('unexpected', env.kind);
        ar.accept(env, m.byteLength);
      } catch (e) {
        assert.ok(e instanceof WireError, `threw ${(e as Error).stack}`);
        outcome = e.reason;
      }
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
    }
    for (const o of ['accepted', 'undecodable', 'bad_chunk', 'unknown_worker'])
      assert.ok((outcomes.get(o) ?? 0) > 50, `few ${o}: ${[...outcomes]}`);
  });
});

describe('a live run under hostile traffic', () => {
  let server: NatsServer;
  before(async () => (server = await startNats()));
  after(async () => server?.close());

  for (const transport of ['nats', 'gloo'] as const) {
    it(`${transport}: finishes with the exact result; the junk is counted by reason`, async () => {
      const cfg = { ...SYNTHETIC_DEFAULTS, params: 3000, batchSize: 8, computeMs: 5 };
      const c = await syntheticCluster(server, 2, cfg, { steps: 40, checksumEvery: 4, syncTimeoutMs: 1000, transport });
      const nc = await connectNats({ url: server.url });
      try {
        const rng = new Rng(2, Stream.Test, 2);
        const targets = [subjects.coord('test'), subjects.worker('test', 'w0'), subjects.worker('test', 'w1'), subjects.gather('test')];
        let i = 0;
        while (c.coordinator.step < 40 && i < 8000) {
          for (let k = 0; k < 50; k++, i++) nc.publish(targets[i % targets.length], hostile(rng, i));
          nc.publish(targets[0], encode({ ...H, run: 'other' }, 'heartbeat', TEMPLATES.heartbeat));
          nc.publish(targets[0], encode({ ...H, worker: 'nobody', origin: 1, seq: i }, 'ack', TEMPLATES.ack));
          await nc.flush();
          await sleep(2);
        }
        const res = await c.coordinator.done;
        assert.ok(res.ok, res.reason);
        const ref = syntheticReference(cfg, 40);
        for (const w of c.workers) {
          const p = (w.state as SyntheticReplica).params;
          for (let j = 0; j < p.length; j++)
            assert.ok(Math.abs(p[j] - ref.params[j]) <= 1e-5 * Math.max(1, Math.abs(ref.params[j])), `param ${j}`);
        }
        const rej = c.coordinator.telemetry.rejected;
        assert.ok(i > 1000, `only ${i} hostile messages were sent`);
        for (const reason of ['undecodable', 'other_run', 'unknown_worker', 'duplicate'] as const)
          assert.ok((rej.get(reason) ?? 0) > 0, `no ${reason} counted: ${[...rej]}`);
        assert.ok(c.workers.every((w) => w.telemetry.rejectedTotal() > 0));
      } finally {
        await nc.close();
        await c.close();
      }
    });
  }

  it('a replay of a whole live capture changes nothing: every copy is refused, each step applied once', async () => {
    const cfg = { ...SYNTHETIC_DEFAULTS, params: 2000, batchSize: 8, computeMs: 5 };
    const outDir = tempDir();
    const logs: string[] = [];
    const c = await syntheticCluster(server, 2, cfg, {
      run: 'replay',
      steps: 60,
      checksumEvery: 4,
      checkpointEvery: 10,
      outDir,
      log: (l) => logs.push(l),
    });
    const spy = await connectNats({ url: server.url, name: 'replayer' });
    try {
      // Capture everything of the run for a while (plans, acks, gradient chunks, state, joins) ...
      const captured: { subject: string; data: Uint8Array }[] = [];
      const sub = spy.subscribe('sf.replay.>', {
        callback: (_e, m) => captured.push({ subject: m.subject, data: Uint8Array.from(m.data) }),
      });
      while (c.coordinator.step < 25) await sleep(10);
      sub.unsubscribe();
      // ... then play it back verbatim while the run goes on, twice.
      for (let round = 0; round < 2; round++) {
        for (const m of captured) spy.publish(m.subject, m.data);
        await spy.flush();
      }
      const res = await c.coordinator.done;
      assert.ok(res.ok, res.reason);
      const ref = syntheticReference(cfg, 60);
      for (const w of c.workers) assert.equal(w.state!.checksum(), c.workers[0].state!.checksum());
      const d = maxRelDiff((c.workers[0].state as SyntheticReplica).params, ref.params);
      assert.ok(d < 1e-5, `max relative difference to a clean run ${d}`);
      const steps = readFileSync(join(outDir, 'train.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { step: number }).step);
      assert.deepEqual(
        steps,
        Array.from({ length: 60 }, (_, k) => k),
        'each step logged once, in order',
      );
      assert.ok(captured.length > 100, `captured only ${captured.length} messages`);
      const dup =
        (c.coordinator.telemetry.rejected.get('duplicate') ?? 0) +
        c.workers.reduce((s, w) => s + (w.telemetry.rejected.get('duplicate') ?? 0), 0);
      assert.ok(dup >= captured.length, `${dup} copies refused of ${2 * captured.length} replayed`);
      assert.equal(c.coordinator.telemetry.stepsAborted, 0, 'a replay aborted a step');
      assert.deepEqual(
        logs.filter((l) => /removed|rolling back|asking for the state/.test(l)),
        [],
      );
    } finally {
      await spy.close();
      await c.close();
    }
  });
});

describe('replay guard', () => {
  it('refuses copies and older origins, accepts gaps and a newer origin', () => {
    const g = new ReplayGuard(2);
    g.check('a', 10, 1);
    g.check('a', 10, 5); // a gap: messages sent elsewhere
    for (const [o, s] of [
      [10, 5],
      [10, 4],
      [9, 100],
      [0, 7],
      [10, 0],
    ])
      assert.throws(
        () => g.check('a', o, s),
        (e: unknown) => e instanceof WireError && e.reason === 'duplicate',
      );
    g.check('a', 11, 1); // a new life of the same sender
    g.check('b', 3, 1);
    g.check('c', 3, 1); // forgets a, the oldest
    g.check('a', 1, 1);
    const s = new Sender(42);
    assert.deepEqual(
      [s.stamp({ x: 1 }), s.stamp({ x: 2 })],
      [
        { x: 1, origin: 42, seq: 1 },
        { x: 2, origin: 42, seq: 2 },
      ],
    );
  });
});
