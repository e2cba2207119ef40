/**
 * Faults against a real nats-server, in one process (synthetic objective, so each test
 * takes a second or two): a worker vanishing mid-step, the broker restarting, the
 * coordinator dying and a new one resuming from the run directory. In every case the run
 * finishes with exactly the parameters of an uninterrupted run (no step lost or applied
 * twice). The same faults with real processes and SIGKILL: cluster-process.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connectNats } from '../src/cluster/connect.js';
import { Coordinator } from '../src/coordinator/coordinator.js';
import { meanGradient } from '../src/core/train/step.js';
import { SyntheticReplica, SYNTHETIC_DEFAULTS, type SyntheticConfig } from '../src/worker/synthetic.js';
import { startNats, syntheticCluster, tempDir, type NatsServer } from './helpers/nats.js';
import { maxRelDiff } from '../src/core/parity.js';

const TRANSPORTS = ['nats', 'gloo'] as const;

const cfg: SyntheticConfig = { ...SYNTHETIC_DEFAULTS, params: 20_000, batchSize: 12, computeMs: 15 };
const STEPS = 40;
let ref: SyntheticReplica;

function assertMatchesReference(r: SyntheticReplica | undefined): void {
  assert.ok(r, 'worker has no state');
  assert.equal(r.step, STEPS);
  const d = maxRelDiff(r.params, ref.params);
  assert.ok(d < 1e-5, `max relative difference to the uninterrupted run: ${d}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(f: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('condition not reached in time');
    await sleep(10);
  }
}

for (const transport of TRANSPORTS) {
  describe(`cluster faults (in process, transport ${transport})`, () => {
    let server: NatsServer;
    before(async () => {
      server = await startNats();
      ref = new SyntheticReplica(cfg);
      for (let k = 0; k < STEPS; k++) {
        const g = await ref.gradSum(k, 0, cfg.batchSize);
        ref.apply(meanGradient(g.grad, g.count));
      }
    });
    after(async () => server?.close());

    it('a worker that vanishes mid-step: the step is re-planned over the survivors', async () => {
      const c = await syntheticCluster(server, 3, cfg, { steps: STEPS, checksumEvery: 5, heartbeatTimeoutMs: 600, transport });
      try {
        await until(() => c.coordinator.step >= 5 + Math.floor(Math.random() * 10));
        await sleep(Math.random() * 15);
        await c.workers[1].close(); // stops answering, like a killed process
        const res = await c.coordinator.done;
        assert.ok(res.ok, res.reason);
        assert.ok(c.coordinator.telemetry.stepsAborted >= 1, 'expected an aborted step');
        for (const w of [c.workers[0], c.workers[2]]) assertMatchesReference((await w.done, w.state) as SyntheticReplica);
      } finally {
        await c.close();
      }
    });

    it('the NATS server restarts mid-run: clients reconnect and the run continues', async () => {
      const c = await syntheticCluster(server, 2, cfg, { steps: STEPS, checksumEvery: 5, transport });
      try {
        await until(() => c.coordinator.step >= 10);
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
      const c = await syntheticCluster(server, 2, cfg, { steps: STEPS, checkpointEvery: 10, outDir, run: 'restart', transport });
      let second: Coordinator | undefined;
      try {
        await until(() => c.coordinator.step >= 14);
        await c.coordinator.close(); // no Stop: workers just stop hearing from it
        await sleep(300);
        const nc = await connectNats({ url: server.url });
        c.conns.push(nc);
        // (flags that say another batch size: the run's recorded config wins)
        second = new Coordinator({ nc, run: 'restart', outDir, configJson: '{}', batchSize: 5, checkpointEvery: 10, transport });
        await second.start();
        assert.equal(second.step, 10, 'resumes from the last checkpoint');
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
