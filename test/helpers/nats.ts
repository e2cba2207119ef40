/**
 * A real nats-server for tests: on a free loopback port, with JetStream in a temporary
 * store, ready before it resolves; stop()/restart() for fault tests, close() to clean up.
 * The process logic is the production one (src/cluster/nats-server.ts).
 */
import { NatsServer, type NatsServerOptions } from '../../src/cluster/nats-server.js';

export { NatsServer };

export async function startNats(opts: NatsServerOptions = {}): Promise<NatsServer> {
  return NatsServer.start({ jetstream: true, ...opts });
}

// ---- in-process clusters (coordinator + workers, each on its own connection) -------

import type { NatsConnection } from 'nats';
import { connectNats } from '../../src/cluster/connect.js';
import { Coordinator, type CoordinatorOptions } from '../../src/coordinator/coordinator.js';
import { Worker, type WorkerOptions } from '../../src/worker/worker.js';
import { syntheticReplica, type SyntheticConfig } from '../../src/worker/synthetic.js';
import type { ReplicaFactory } from '../../src/worker/replica.js';
import { startC10d, type C10dSide } from '../../src/worker/collective/c10d.js';
import { tempDir } from './cli.js';

export interface TestCluster {
  coordinator: Coordinator;
  workers: Worker[];
  conns: NatsConnection[];
  addWorker(opts?: Partial<WorkerOptions>): Promise<Worker>;
  close(): Promise<void>;
}

const quiet = process.env.SCOREFLOW_TEST_LOG ? (l: string) => console.error(l) : () => {};

/** A coordinator and `n` workers building replicas with `factory`, all in this process. */
export async function startCluster(
  server: NatsServer,
  n: number,
  configJson: string,
  batchSize: number,
  factory: ReplicaFactory,
  copts: Partial<CoordinatorOptions> = {},
): Promise<TestCluster> {
  const conns: NatsConnection[] = [];
  const conn = async (name: string) => {
    const nc = await connectNats({ url: server.url, name });
    conns.push(nc);
    return nc;
  };
  const run = copts.run ?? 'test';
  const coordinator = new Coordinator({
    nc: await conn('coordinator'),
    run,
    outDir: copts.outDir ?? tempDir(),
    configJson,
    batchSize,
    minWorkers: n,
    heartbeatTimeoutMs: 1500,
    log: quiet,
    ...copts,
  });
  await coordinator.start();
  const workers: Worker[] = [];
  const sides: C10dSide[] = [];
  // transport gloo (or auto): every worker gets its own c10d store and Gloo groups, as `worker start` does
  const c10d = copts.transport !== undefined && copts.transport !== 'nats';
  const addWorker = async (opts: Partial<WorkerOptions> = {}) => {
    const side = c10d ? await startC10d({ host: '127.0.0.1', timeoutMs: 5000 }) : undefined;
    if (side) sides.push(side);
    const w = new Worker({
      nc: await conn('worker'),
      run,
      id: `w${workers.length}`,
      factory,
      heartbeatMs: 200,
      log: quiet,
      collectives: side?.collectives,
      dataPlane: side?.dataPlane,
      ...opts,
    });
    workers.push(w);
    w.start();
    return w;
  };
  for (let i = 0; i < n; i++) await addWorker();
  return {
    coordinator,
    workers,
    conns,
    addWorker,
    async close() {
      await coordinator.close();
      for (const w of workers) await w.close();
      for (const s of sides) s.close();
      for (const c of conns) await c.close().catch(() => {});
    },
  };
}

/** A coordinator and `n` synthetic-objective workers on `server`. */
export async function syntheticCluster(
  server: NatsServer,
  n: number,
  cfg: Partial<SyntheticConfig>,
  copts: Partial<CoordinatorOptions> = {},
): Promise<TestCluster> {
  const config = { synthetic: true, params: 1000, batchSize: 16, samples: 256, seed: 1, lr: 0.01, ...cfg };
  return startCluster(server, n, JSON.stringify(config), config.batchSize, syntheticReplica, copts);
}
