/**
 * c10d process groups (src/worker/collective/process-group.ts over native/src/c10d.cc) between real
 * processes: each rank is a child process (helpers/c10d-peer.ts) speaking Gloo over loopback to
 * the others, with rank 0's TCPStore server as the rendezvous. CI installs libgloo-dev, so an
 * addon built without c10d gloo fails these tests rather than skipping them.
 */
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ProcessGroup, StoreServer, c10dInfo, type GroupOptions } from '../src/worker/collective/process-group.js';
import { digest, expectedSum, type ValueKind } from './helpers/c10d-values.js';

/** Not a multiple of any chunk size Gloo might cut the vector into. */
const N = 1_049_633;
const PEER = fileURLToPath(new URL('./helpers/c10d-peer.js', import.meta.url));

interface Reply {
  seq: number;
  error?: string;
  port?: number;
  results?: { digest?: string; head?: number[]; error?: string }[];
}

/** One rank in a child process; call() sends it a request and resolves with the reply. */
class Peer {
  readonly child: ChildProcess;
  private seq = 0;
  private readonly waiting = new Map<number, { resolve: (r: Reply) => void; reject: (e: Error) => void }>();

  constructor() {
    this.child = fork(PEER, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.child.on('message', (r: Reply) => {
      const w = this.waiting.get(r.seq);
      this.waiting.delete(r.seq);
      if (r.error !== undefined) w?.reject(new Error(r.error));
      else w?.resolve(r);
    });
    this.child.on('exit', (code, signal) => {
      for (const w of this.waiting.values()) w.reject(new Error(`peer exited (${code ?? signal}) with a request unanswered`));
      this.waiting.clear();
    });
  }

  call(op: string, fields: Record<string, unknown> = {}): Promise<Reply> {
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject });
      this.child.send({ seq, op, ...fields });
    });
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async kill(): Promise<void> {
    if (!this.alive) return;
    const exited = once(this.child, 'exit');
    this.child.kill('SIGKILL');
    await exited;
  }

  /** Closes the IPC channel, on which the peer exits; resolves with its exit status. */
  async end(): Promise<number | null> {
    const exited = once(this.child, 'exit');
    this.child.disconnect();
    const [code] = (await exited) as [number | null];
    return code;
  }
}

/**
 * `world` ranks, rank 0 hosting the store server. When `body` is done the live ones are ended and
 * must exit with status 0, their groups open or not (a group's thread touching Node after its
 * teardown, or a process group destroyed under libtorch's static destructors, crashed the exit).
 */
async function withRanks(world: number, body: (peers: Peer[], port: number) => Promise<void>): Promise<void> {
  const peers = Array.from({ length: world }, () => new Peer());
  try {
    await Promise.all(peers.map((p) => p.call('ping'))); // all started: no rendezvous waits on a slow start
    const { port } = await peers[0].call('listen');
    await body(peers, port as number);
  } catch (e) {
    await Promise.all(peers.map((p) => p.kill()));
    throw e;
  }
  const live = peers.filter((p) => p.alive);
  assert.deepEqual(
    await Promise.all(live.map((p) => p.end())),
    live.map(() => 0),
    'exit statuses',
  );
}

function options(port: number, prefix: string, rank: number, worldSize: number, timeoutMs = 20_000): GroupOptions {
  return { backend: 'gloo', storeHost: '127.0.0.1', storePort: port, prefix, rank, worldSize, timeoutMs };
}

/** Every peer joins group `id` under `prefix`, peer k as rank k (with Gloo bound to iface[k]). */
async function join(peers: Peer[], port: number, id: string, prefix: string, timeoutMs?: number, iface?: string[]): Promise<void> {
  await Promise.all(
    peers.map((p, rank) =>
      p.call('create', { id, options: { ...options(port, prefix, rank, peers.length, timeoutMs), iface: iface?.[rank] } }),
    ),
  );
}

/**
 * Every peer all-reduces, in one go and in the same order, one vector per entry of `calls`
 * (rankValues(kind, n, seed, rank)); each result must equal expectedSum bit for bit.
 */
async function allreduceAndCheck(peers: Peer[], calls: { id: string; seed: number }[], kind: ValueKind, n = N): Promise<void> {
  const replies = await Promise.all(peers.map((p) => p.call('allreduce', { ids: calls, kind, n })));
  calls.forEach(({ id, seed }, k) => {
    const want = expectedSum(kind, n, seed, peers.length);
    replies.forEach((r, rank) => {
      const got = r.results?.[k];
      assert.equal(got?.error, undefined, `rank ${rank}, group ${id}: ${got?.error}`);
      assert.equal(
        got?.digest,
        digest(want),
        `rank ${rank}, group ${id}, seed ${seed}: head ${got?.head} vs ${Array.from(want.subarray(0, 3))}`,
      );
    });
  });
}

const oneLine = (e: Error) => e.message.length > 0 && !e.message.includes('\n');

test('c10dInfo: the addon has c10d gloo (CI installs libgloo-dev), and says in one line what is missing', () => {
  const info = c10dInfo();
  assert.equal(info.gloo, true, info.why);
  assert.equal(typeof info.nccl, 'boolean');
  assert.ok(!info.why.includes('\n'));
  assert.equal(info.why === '', info.gloo && info.nccl, info.why);
});

test('2 ranks sum 1,049,633 arbitrary floats: every rank gets a + b rounded to float32, bit for bit', async () => {
  await withRanks(2, async (peers, port) => {
    await join(peers, port, 'g', 'two');
    await allreduceAndCheck(peers, [{ id: 'g', seed: 1 }], 'normal');
  });
});

test('3 ranks sum 1,049,633 floats whose sums are exact: every rank gets the exact sum', async () => {
  await withRanks(3, async (peers, port) => {
    await join(peers, port, 'g', 'three');
    await allreduceAndCheck(peers, [{ id: 'g', seed: 2 }], 'dyadic');
  });
});

test('several all-reduces on one group, issued without waiting, run in order; more groups under new prefixes share the store; iface by name or address', async () => {
  await withRanks(2, async (peers, port) => {
    await join(peers, port, 'a', 'epoch-1');
    await allreduceAndCheck(
      peers,
      [
        { id: 'a', seed: 3 },
        { id: 'a', seed: 4 },
        { id: 'a', seed: 5 },
      ],
      'normal',
      100_003,
    );
    await join(peers, port, 'b', 'epoch-2'); // while 'a' still exists
    await allreduceAndCheck(
      peers,
      [
        { id: 'b', seed: 6 },
        { id: 'a', seed: 7 },
        { id: 'b', seed: 8 },
      ],
      'normal',
      100_003,
    );
    await Promise.all(peers.map((p) => p.call('close', { id: 'a' })));
    await allreduceAndCheck(peers, [{ id: 'b', seed: 9 }], 'normal', 100_003);
    // Gloo bound by interface name on one rank, by address on the other
    await join(peers, port, 'c', 'epoch-3', undefined, ['lo', '127.0.0.1']);
    await allreduceAndCheck(peers, [{ id: 'c', seed: 12 }], 'normal', 100_003);
  });
});

test("a rank SIGKILLed: the survivors' all-reduce rejects with one line within timeout + 10 s, and a new group of them works", async () => {
  const timeoutMs = 5000;
  await withRanks(3, async (peers, port) => {
    await join(peers, port, 'g', 'before', timeoutMs);
    await peers[2].kill();
    const survivors = peers.slice(0, 2);
    const t0 = Date.now();
    const replies = await Promise.all(survivors.map((p) => p.call('allreduce', { ids: [{ id: 'g', seed: 10 }], kind: 'dyadic', n: N })));
    const elapsed = Date.now() - t0;
    replies.forEach((r, rank) => {
      const error = r.results?.[0].error;
      assert.ok(error !== undefined, `rank ${rank}'s all-reduce did not fail`);
      assert.match(error, /^c10d: all-reduce \(gloo rank \d of 3, prefix 'before'\) failed: \S/);
      assert.ok(!error.includes('\n'), error);
    });
    assert.ok(elapsed < timeoutMs + 10_000, `the failure took ${elapsed} ms`);
    await Promise.all(survivors.map((p) => p.call('close', { id: 'g' }))); // after a failure: safe
    await join(survivors, port, 'g2', 'after', timeoutMs);
    await allreduceAndCheck(survivors, [{ id: 'g2', seed: 11 }], 'dyadic');
  });
});

test('close() with an all-reduce pending does not block: the event loop runs on, and the call still settles', async () => {
  const server = await StoreServer.listen('127.0.0.1');
  const peer = new Peer();
  try {
    await peer.call('ping'); // started, so that the rendezvous needs no long timeout
    const o = (rank: number) => options(server.port, 'pending', rank, 2, 3000);
    const [group] = await Promise.all([ProcessGroup.create(o(0)), peer.call('create', { id: 'g', options: o(1) })]);
    // The peer never all-reduces, so this call waits for the timeout.
    const pending = group.allreduceSum(new Float32Array(1000)).then(
      () => 'resolved',
      (e: Error) => e,
    );
    group.close();
    const first = await Promise.race([new Promise((r) => setImmediate(() => r('event loop'))), pending]);
    assert.equal(first, 'event loop');
    const settled = await pending;
    assert.ok(settled instanceof Error && oneLine(settled), String(settled));
    await assert.rejects(
      group.allreduceSum(new Float32Array(3)),
      /^Error: c10d: the group \(gloo rank 0 of 2, prefix 'pending'\) is closed$/,
    );
  } finally {
    await peer.kill();
    server.close();
  }
});

test('a rendezvous a rank never joins rejects with one line after its timeout', async () => {
  const server = await StoreServer.listen('127.0.0.1');
  try {
    await assert.rejects(
      ProcessGroup.create(options(server.port, 'alone', 0, 2, 1000)),
      (e: Error) => oneLine(e) && e.message.startsWith("c10d: creating the group (gloo rank 0 of 2, prefix 'alone', store 127.0.0.1:"),
    );
  } finally {
    server.close();
  }
});

test('bad options are refused with one line saying what to give', async () => {
  const good = options(29500, 'p', 0, 2);
  const bad: [Partial<Record<keyof GroupOptions, unknown>>, RegExp][] = [
    [{ rank: 2 }, /^c10d: rank must be an integer in \[0, 2\), got 2$/],
    [{ rank: -1 }, /^c10d: rank must be an integer in \[0, 2\), got -1$/],
    [{ worldSize: 0, rank: 0 }, /^c10d: worldSize must be an integer >= 1, got 0$/],
    [{ prefix: '' }, /^c10d: prefix must be a non-empty string/],
    [{ timeoutMs: 0 }, /^c10d: timeoutMs must be a positive number of milliseconds, got 0$/],
    [{ timeoutMs: -5 }, /^c10d: timeoutMs must be a positive/],
    [{ backend: 'mpi' }, /^c10d: backend must be 'gloo' or 'nccl', got 'mpi'$/],
    [{ storePort: 0 }, /^c10d: storePort must be an integer in \[1, 65535\], got 0$/],
    [{ storeHost: '' }, /^c10d: storeHost must name/],
    [{ iface: '' }, /^c10d: iface, when given, must name/],
    [{ device: 0 }, /^c10d: device is for the nccl backend only$/],
  ];
  for (const [change, message] of bad) {
    await assert.rejects(
      ProcessGroup.create({ ...good, ...change } as GroupOptions),
      (e: Error) => oneLine(e) && message.test(e.message),
      JSON.stringify(change),
    );
  }
  if (!c10dInfo().nccl) {
    await assert.rejects(
      ProcessGroup.create({ ...good, backend: 'nccl' }),
      (e: Error) => oneLine(e) && /^c10d: backend 'nccl' is unavailable: \S/.test(e.message),
    );
  }
  await assert.rejects(StoreServer.listen('127.0.0.1', 70_000), /^Error: c10d: store port must be an integer in \[0, 65535\]/);
  await assert.rejects(StoreServer.listen(''), /^Error: c10d: the store server needs a host/);
});
