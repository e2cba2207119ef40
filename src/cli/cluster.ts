/**
 * One bring-up for every coordinator command (`start`, `sample`, `likelihood`): the embedded
 * nats-server unless --nats, the coordinator's connection, its metrics endpoint when
 * --metrics-port, and local workers unless --no-spawn; all torn down in reverse order after
 * the command's body, however it ends.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Command } from 'commander';
import type { NatsConnection } from 'nats';
import { addAuthOptions, authEnv, authFlags, clientAuth, serverAuth, type AuthFlags } from '../cluster/auth.js';
import { connectNats } from '../cluster/connect.js';
import { brokerFor } from '../cluster/nats-server.js';
import { spawnWorkers, type Spawned } from '../coordinator/spawn.js';
import { createMetrics, nextFreePorts, type Metrics, type MetricsServer } from '../metrics/index.js';
import { parseIntArg, parsePort } from './common.js';

export interface ClusterFlags extends AuthFlags {
  gpus: number;
  spawn: boolean;
  nats?: string;
  run?: string;
  threads?: number;
  metricsPort?: number;
  backend: string;
}

/** The flags every coordinator command shares. */
export function addClusterOptions(cmd: Command, what: string): Command {
  return addAuthOptions(cmd)
    .option('--gpus <n>', 'workers to start, one per device (CPU workers where there are fewer GPUs)', parseIntArg(1, 4096), 1)
    .option('--no-spawn', `start no workers: ${what}`)
    .option('--nats <url>', 'NATS server (default: start nats-server with JetStream on a free loopback port)')
    .option('--metrics-port <port>', 'serve /metrics, /healthz, /readyz (spawned workers take the next free ports)', parsePort);
}

export interface Supervision {
  maxRestarts: number;
  restartBackoffMs: number;
  onGiveUp?: (id: string, running: number) => void;
}

export interface Cluster {
  nc: NatsConnection;
  /** The broker's URL as workers reach it. */
  url: string;
  run: string;
  /** How a worker elsewhere joins (with the generated token of an embedded server, if any). */
  joinCommand: string;
  /** The coordinator's metrics, when --metrics-port was given. */
  metrics?: Metrics;
  /** Starts the local workers (unless --no-spawn: then it says how to start them) and supervises them. */
  spawnWorkers(extraArgs?: string[], supervision?: Supervision): Promise<void>;
  /** The run has ended: no more restarts of spawned workers. */
  endSupervision(): void;
  /** Waits up to `ms` for spawned workers to exit by themselves (after a Stop). */
  workersExited(ms: number): Promise<void>;
}

const log = (line: string) => process.stderr.write(line + '\n');

/**
 * The credentials of the run: the flags' (or environment's), or, for an embedded server with
 * none given, a random token of its own, so that no other local process can join or listen
 * in. Spawned workers get it in their environment; `worker start` elsewhere needs it too.
 */
function runAuth(f: ClusterFlags): { auth: AuthFlags; generated: boolean } {
  const auth = authFlags(f);
  const given = auth.natsToken || auth.natsUser || auth.natsNkey || auth.tlsCert;
  if (f.nats || given) return { auth, generated: false };
  return { auth: { ...auth, natsToken: randomBytes(24).toString('base64url') }, generated: true };
}

export async function withCluster<T>(f: ClusterFlags, run: string, fn: (c: Cluster) => Promise<T>): Promise<T> {
  const { auth, generated } = runAuth(f);
  const { url, server } = await brokerFor(f.nats, serverAuth(auth), log);
  let spawned: Spawned | undefined;
  let metricsServer: MetricsServer | undefined;
  let nc: NatsConnection | undefined;
  try {
    nc = await connectNats({ ...clientAuth(auth), url, name: `scoreflow-coordinator-${run}` });
    let metrics: Metrics | undefined;
    if (f.metricsPort !== undefined) {
      metrics = createMetrics({ role: 'coordinator', run });
      metricsServer = await metrics.serve(f.metricsPort, { tries: 100 });
      log(`coordinator: metrics on :${metricsServer.port}/metrics`);
    }
    // (a generated token is the only way in: the command says it, on this terminal only)
    const joinCommand = `${generated ? `SCOREFLOW_NATS_TOKEN=${auth.natsToken} ` : ''}worker start --nats ${url} --run ${run}`;
    const cluster: Cluster = {
      nc,
      url,
      run,
      metrics,
      joinCommand,
      async spawnWorkers(extraArgs = [], supervision = { maxRestarts: 0, restartBackoffMs: 0 }) {
        if (!f.spawn) {
          log(`coordinator: start workers with: ${cluster.joinCommand}`);
          return;
        }
        // Workers serve metrics on the free ports above the coordinator's bound one (each logged as it binds).
        const metricsPorts = metricsServer && (await nextFreePorts(f.metricsPort ? metricsServer.port : 0, f.gpus));
        spawned = spawnWorkers({
          n: f.gpus,
          nats: url,
          run,
          backend: f.backend,
          threads: f.threads,
          env: authEnv(auth),
          metricsPorts,
          extraArgs,
          ...supervision,
          log,
        });
      },
      endSupervision() {
        spawned?.endSupervision();
      },
      async workersExited(ms) {
        const children = spawned?.children ?? [];
        const exits = children.map((c) => c.exitCode === null && c.signalCode === null && new Promise((r) => c.once('exit', r)));
        await Promise.race([Promise.all(exits), sleep(ms, undefined, { ref: false })]);
      },
    };
    return await fn(cluster);
  } finally {
    await spawned?.stop();
    await nc?.drain().catch(() => {});
    await metricsServer?.close(); // (a listening server would keep the process alive after the run)
    await server?.close();
  }
}
