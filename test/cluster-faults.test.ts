/**
 * Faults against a real nats-server, in one process (synthetic objective, so each test
 * takes a second or two): a worker vanishing mid-step, an all-reduce that completes on
 * some members and not on others, the broker restarting, the coordinator dying and a new
 * one resuming from the run directory, all of it many times over. In every case the run
 * finishes with exactly the parameters of an uninterrupted run (no step lost or applied
 * twice): bit for bit when the membership never changed. Also: the coordinator is off the
 * step path (one plan, a Commit every few steps, no message per step). The same faults with
 * real processes and SIGKILL: cluster-process.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect, createServer, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { connectNats } from '../src/cluster/connect.js';
import { decode, type BodyKind } from '../src/protocol/envelope.js';
import { subjects } from '../src/protocol/subjects.js';
import { Coordinator } from '../src/coordinator/coordinator.js';
import { SyntheticReplica, SYNTHETIC_DEFAULTS, type SyntheticConfig } from '../src/worker/synthetic.js';
import { tempDir } from './helpers/cli.js';
import { startNats, syntheticCluster, type NatsServer } from './helpers/nats.js';
import { logged, range, until } from './helpers/procs.js';
import { syntheticReference } from './helpers/synthetic.js';
import { maxRelDiff } from '../src/core/parity.js';

const TRANSPORTS = ['nats', 'gloo'] as const;

const cfg: SyntheticConfig = { ...SYNTHETIC_DEFAULTS, params: 20_000, batchSize: 12, computeMs: 15 };
const STEPS = 40;
let ref: SyntheticReplica;

/** Max relative parameter difference to the uninterrupted single-replica run (asserted < 1e-5, returned for the record). */
function assertMatchesReference(r: SyntheticReplica | undefined): number {
  assert.ok(r, 'worker has no state');
  assert.equal(r.step, STEPS);
  const d = maxRelDiff(r.params, ref.params);
  assert.ok(d < 1e-5, `max relative difference to the uninterrupted run: ${d}`);
  return d;
}

/**
 * A TCP relay to the broker that can stop moving bytes both ways (a network partition: nothing
 * is lost or reset, it just does not arrive) and start again.
 */
async function partitionableRelay(url: string) {
  const target = new URL(url);
  const pairs: Socket[][] = [];
  let cut = false;
  const relay = createServer((a) => {
    const b = connect(Number(target.port), target.hostname);
    pairs.push([a, b]);
    a.pipe(b);
    b.pipe(a);
    for (const [x, y] of [
      [a, b],
      [b, a],
    ])
      x.on('error', () => y.destroy()).on('close', () => y.destroy());
    if (cut) for (const x of [a, b]) x.pause();
  });
  await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
  const port = (relay.address() as { port: number }).port;
  return {
    url: `nats://127.0.0.1:${port}`,
    partition() {
      cut = true;
      for (const s of pairs.flat()) s.pause();
    },
    heal() {
      cut = false;
      for (const s of pairs.flat()) s.resume();
    },
    close() {
      for (const s of pairs.flat()) s.destroy();
      relay.close();
    },
  };
}

for (const transport of TRANSPORTS) {
  describe(`cluster faults (in process, transport ${transport})`, () => {
    let server: NatsServer;
    before(async () => {
      server = await startNats();
      ref = syntheticReference(cfg, STEPS);
    });
    after(async () => server?.close());

    it('a worker that vanishes mid-step: the step is re-planned over the survivors', async (t) => {
      const c = await syntheticCluster(server, 3, cfg, { steps: STEPS, checksumEvery: 5, heartbeatTimeoutMs: 600, transport });
      try {
        await until(() => c.coordinator.step >= 5 + Math.floor(Math.random() * 10), 10_000, 'a step from 5 to 14', 10);
        await sleep(Math.random() * 15);
        await c.workers[1].close(); // stops answering, like a killed process
        const res = await c.coordinator.done;
        assert.ok(res.ok, res.reason);
        assert.ok(c.coordinator.telemetry.stepsAborted >= 1, 'expected an aborted step');
        for (const w of [c.workers[0], c.workers[2]]) {
          const d = assertMatchesReference((await w.done, w.state) as SyntheticReplica);
          t.diagnostic(`3 workers, then 2 from the last commit: max relative difference ${d.toExponential(2)} to one replica`);
        }
      } finally {
        await c.close();
      }
    });

    it('the coordinator is off the step path: one plan, a Commit every C steps, acks only the other way', async () => {
      const nc = await connectNats({ url: server.url });
      const kinds = new Map<BodyKind, number>();
      nc.subscribe(subjects.ctl('offpath'), {
        callback: (err, m) => {
          if (err) return;
          const k = decode(m.data).kind;
          kinds.set(k, (kinds.get(k) ?? 0) + 1);
        },
      });
      let acks = 0;
      nc.subscribe(subjects.coord('offpath'), { callback: (err, m) => !err && decode(m.data).kind === 'ack' && acks++ });
      await nc.flush();
      const outDir = tempDir();
      const c = await syntheticCluster(server, 2, cfg, {
        steps: STEPS,
        commitEvery: 8,
        checkpointEvery: 0,
        outDir,
        run: 'offpath',
        transport,
      });
      try {
        const res = await c.coordinator.done;
        assert.ok(res.ok, res.reason);
        for (const w of c.workers) assertMatchesReference((await w.done, w.state) as SyntheticReplica);
        await nc.flush();
        assert.equal(kinds.get('plan'), 1, 'plans');
        assert.equal(kinds.get('commit'), STEPS / 8, 'commits');
        assert.equal(acks, 2 * STEPS, 'one ack per worker and step');
        const perStep = [...kinds].filter(([k]) => k !== 'plan' && k !== 'commit' && k !== 'hello' && k !== 'stateRequest' && k !== 'stop');
        assert.deepEqual(perStep, [], 'no other control message');
        assert.deepEqual(logged(outDir), range(0, STEPS), 'each step logged once, in order');
      } finally {
        await c.close();
        await nc.close();
      }
    });

    it('an all-reduce that completes on one member and not on the others: all go back to the last commit and re-run it', async () => {
      const outDir = tempDir();
      const c = await syntheticCluster(server, 3, cfg, { steps: STEPS, commitEvery: 5, heartbeatTimeoutMs: 600, outDir, transport });
      const seen = c.workers.map(() => new Map<number, number>());
      c.workers.forEach((w, i) => w.telemetry.on('workerStep', (r) => seen[i].set(r.step, (seen[i].get(r.step) ?? 0) + 1)));
      // Worker 1 applies step 13 (its all-reduce completed) and dies before it acks.
      c.workers[1].telemetry.on('workerStep', (r) => r.step === 13 && void c.workers[1].close());
      try {
        const res = await c.coordinator.done;
        assert.ok(res.ok, res.reason);
        assert.ok(c.coordinator.telemetry.stepsAborted >= 1, 'expected an aborted plan');
        for (const i of [0, 2]) {
          assertMatchesReference((await c.workers[i].done, c.workers[i].state) as SyntheticReplica);
          assert.equal(seen[i].get(10), 2, `worker ${i} re-ran step 10 (from the commit at step 10)`);
          assert.ok((seen[i].get(14) ?? 0) <= 2 && seen[i].get(9) === 1, `worker ${i}: ${[...seen[i]]}`);
        }
        assert.deepEqual(logged(outDir), range(0, STEPS), 'each step logged once, in order');
      } finally {
        await c.close();
      }
    });

    it('killed and resumed many times, membership unchanged: bit for bit the weights of an undisturbed run', async () => {
      const opts = { steps: STEPS, commitEvery: 4, checkpointEvery: 8, heartbeatTimeoutMs: 800, transport };
      const quiet = await syntheticCluster(server, 2, cfg, { ...opts, run: 'undisturbed' });
      let want: Float32Array;
      try {
        assert.ok((await quiet.coordinator.done).ok);
        await Promise.all(quiet.workers.map((w) => w.done));
        want = Float32Array.from((quiet.workers[0].state as SyntheticReplica).params);
      } finally {
        await quiet.close();
      }
      const outDir = tempDir();
      const c = await syntheticCluster(server, 2, cfg, { ...opts, outDir, run: 'chaos' });
      const coordinators: Coordinator[] = [c.coordinator];
      const current = () => coordinators[coordinators.length - 1];
      try {
        for (const [i, fault] of (['coordinator', 'worker', 'broker', 'coordinator', 'coordinator'] as const).entries()) {
          const at = Math.min(STEPS - 6, 6 * (i + 1) + Math.floor(Math.random() * 4));
          await until(() => current().step >= at, 30_000, `step ${at}`, 10);
          await sleep(Math.random() * 30);
          if (fault === 'broker') await server.restart(150);
          else if (fault === 'worker') {
            // the last rank dies; a new worker takes its place (same rank, same shard)
            await c.workers[c.workers.length - 1].close();
            await c.addWorker({ id: `w${c.workers.length}` });
          } else {
            // (in one process a closed coordinator's checkpoint write would go on beside its
            // successor's start: kill it just after one, as a kill -9 between two would)
            await new Promise((r) => current().telemetry.once('checkpoint', r));
            await current().close();
            const nc = await connectNats({ url: server.url });
            c.conns.push(nc);
            const next = new Coordinator({ nc, run: 'chaos', outDir, configJson: '{}', batchSize: cfg.batchSize, minWorkers: 2, ...opts });
            coordinators.push(next);
            await next.start();
          }
        }
        const res = await current().done;
        assert.ok(res.ok, res.reason);
        const live = c.workers.filter((w) => w.state?.step === STEPS);
        assert.ok(live.length >= 2, 'two workers finished');
        for (const w of live) {
          const got = (w.state as SyntheticReplica).params;
          assert.ok(
            got.every((v, i) => Object.is(v, want[i])),
            `max relative difference to the undisturbed run: ${maxRelDiff(got, want)}`,
          );
        }
        assert.deepEqual(logged(outDir), range(0, STEPS), 'each step logged once, in order');
      } finally {
        for (const k of coordinators.slice(1)) await k.close();
        await c.close();
      }
    });

    it('a worker partitioned from the broker for a while: the others go on from the last commit, it comes back and syncs', async (t) => {
      const slow = { ...cfg, computeMs: 60 };
      const outDir = tempDir();
      const relay = await partitionableRelay(server.url);
      const c = await syntheticCluster(server, 2, slow, {
        steps: STEPS,
        commitEvery: 5,
        heartbeatTimeoutMs: 600,
        minWorkers: 3,
        outDir,
        transport,
      });
      const live: number[] = [];
      c.coordinator.telemetry.on('members', (m) => live.push(m.live));
      try {
        const nc = await connectNats({ url: relay.url });
        c.conns.push(nc);
        const cut = await c.addWorker({ nc, id: 'cut' });
        await until(() => c.coordinator.step >= 10, 30_000, 'step 10', 10);
        relay.partition();
        await sleep(1500);
        relay.heal();
        const res = await c.coordinator.done;
        assert.ok(res.ok, res.reason);
        assert.ok(c.coordinator.telemetry.stepsAborted >= 1, 'expected an aborted plan');
        assert.deepEqual(live.slice(live.indexOf(3)).includes(2), true, `live members over time: ${live}`);
        assert.equal(live[live.length - 1], 3, `the partitioned worker rejoined: ${live}`);
        for (const w of c.workers) {
          const d = assertMatchesReference((await w.done, w.state) as SyntheticReplica);
          t.diagnostic(`${w.id}: max relative difference ${d.toExponential(2)} to one replica`);
        }
        assert.equal(cut.state?.step, STEPS);
        assert.deepEqual(logged(outDir), range(0, STEPS), 'each step logged once, in order');
      } finally {
        await c.close();
        relay.close();
      }
    });

    it('the NATS server restarts mid-run: clients reconnect and the run continues', async () => {
      const c = await syntheticCluster(server, 2, cfg, { steps: STEPS, checksumEvery: 5, transport });
      try {
        await until(() => c.coordinator.step >= 10, 10_000, 'step 10', 10);
        await server.restart(200);
        const res = await c.coordinator.done;
        assert.ok(res.ok, res.reason);
        for (const w of c.workers) assertMatchesReference((await w.done, w.state) as SyntheticReplica);
      } finally {
        await c.close();
      }
    });

    it('the coordinator dies; a new one on the same run directory resumes and workers re-attach', async () => {
      const outDir = tempDir();
      const c = await syntheticCluster(server, 2, cfg, {
        steps: STEPS,
        checkpointEvery: 10,
        commitEvery: 2,
        outDir,
        run: 'restart',
        transport,
      });
      let lastCheckpoint = 0;
      c.coordinator.telemetry.on('checkpoint', (e) => (lastCheckpoint = e.step));
      let second: Coordinator | undefined;
      try {
        await until(() => c.coordinator.step >= 14, 10_000, 'step 14', 10);
        await c.coordinator.close(); // no Stop: workers just stop hearing from it
        await sleep(300);
        const nc = await connectNats({ url: server.url });
        c.conns.push(nc);
        // (flags that say another batch size: the run's recorded config wins)
        second = new Coordinator({
          nc,
          run: 'restart',
          outDir,
          configJson: '{}',
          batchSize: 5,
          checkpointEvery: 10,
          minWorkers: 2,
          transport,
        });
        await second.start();
        assert.ok(lastCheckpoint >= 10);
        assert.equal(second.step, lastCheckpoint, 'resumes from the last checkpoint');
        const res = await second.done;
        assert.ok(res.ok, res.reason);
        for (const w of c.workers) assertMatchesReference((await w.done, w.state) as SyntheticReplica);
      } finally {
        await second?.close();
        await c.close();
      }
    });
  });
}
