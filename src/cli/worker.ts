/**
 * `worker start --nats URL --run ID [--device i] [--threads T] [--backend B]`: one process
 * per device. Joins the run, computes its shards with a GradPool, takes part in the
 * all-reduce, and exits when the coordinator ends the run (0 when it finished, 1 when it
 * was stopped).
 */
import { Option } from 'commander';
import { addAuthOptions, authFlags, clientAuth, type AuthFlags } from '../cluster/auth.js';
import { connectNats } from '../cluster/connect.js';
import { backendInfo } from '../core/backend/index.js';
import { checkId } from '../protocol/subjects.js';
import { bindTelemetry, createMetrics } from '../metrics/index.js';
import { JobRunner } from '../worker/jobs.js';
import { trainerReplicas } from '../worker/trainer-replica.js';
import { defaultDataHost, startC10d } from '../worker/collective/c10d.js';
import { defaultWorkerId, Worker, WORKER_DEFAULTS } from '../worker/worker.js';
import { AlreadySaid, backendOption, main, newProgram, parseIntArg, parsePort, poolThreads, startBackend } from './common.js';

interface WorkerFlags extends AuthFlags {
  nats: string;
  run: string;
  id?: string;
  device: number;
  threads?: number;
  backend: string;
  metricsPort?: number;
  heartbeatMs: number;
  jobs: boolean;
  c10d: boolean;
  dataHost?: string;
  dataIface?: string;
  dataPort: number;
  collectiveTimeout: number;
  parentPipe: boolean;
}

const log = (line: string) => process.stderr.write(line + '\n');

/**
 * --parent-pipe (set by `coordinator start` for the workers it spawns): stdin is a pipe from
 * the coordinator, closed by the kernel when it dies, however it dies; then there is no run
 * left to serve, so exit rather than linger as an orphan holding a device.
 */
function exitWhenParentGoes(): void {
  const gone = () => {
    log('worker: the coordinator that started this worker is gone (its pipe closed); exiting');
    process.exit(1);
  };
  process.stdin.on('end', gone);
  process.stdin.on('error', gone);
  process.stdin.resume();
}

async function start(f: WorkerFlags): Promise<void> {
  if (f.parentPipe) exitWhenParentGoes();
  checkId('run', f.run);
  const id = checkId('worker', f.id ?? defaultWorkerId(f.device));
  const auth = clientAuth(authFlags(f));
  // One device per process: a GPU backend sees only its own device, as cuda:0.
  if (f.device >= 0 && process.env.CUDA_VISIBLE_DEVICES === undefined) process.env.CUDA_VISIBLE_DEVICES = String(f.device);
  const backend = await startBackend({
    backend: f.backend,
    device: f.device >= 0 && f.backend === 'torch' ? 'cuda:0' : undefined,
    threads: f.threads,
  });
  const threads = poolThreads(backend, f.threads);
  const factory = trainerReplicas({ backend, threads, log });
  const nc = await connectNats({ ...auth, url: f.nats, name: `scoreflow-worker-${id}` });
  // The c10d data plane (gloo, nccl), when the addon has it: a store for rendezvous, bound to one address.
  const c10d = f.c10d
    ? await startC10d({
        host: f.dataHost ?? (await defaultDataHost(f.nats)),
        port: f.dataPort,
        iface: f.dataIface,
        timeoutMs: f.collectiveTimeout,
        cuda: f.device >= 0,
      })
    : undefined;
  if (c10d)
    log(
      `worker ${id}: transports nats${Object.keys(c10d.collectives)
        .map((t) => `, ${t}`)
        .join(
          '',
        )}${c10d.dataPlane.storePort ? ` (c10d store on ${c10d.dataPlane.host}:${c10d.dataPlane.storePort})` : ` (${c10d.dataPlane.note})`}`,
    );
  const worker = new Worker({
    nc,
    run: f.run,
    id,
    device: f.device,
    threads: backend === 'torch' ? (backendInfo().threads ?? threads) : threads,
    backend,
    factory,
    heartbeatMs: f.heartbeatMs,
    log,
    collectives: c10d?.collectives,
    dataPlane: c10d?.dataPlane,
  });
  // Sampling/likelihood jobs of this run, pulled from its JetStream work queue while not training.
  const jobs = f.jobs ? new JobRunner({ nc, run: f.run, id, backend, isIdle: () => !worker.training, log }) : undefined;
  if (f.metricsPort !== undefined) {
    const metrics = createMetrics({ role: 'worker', run: f.run, worker: id, device: f.device >= 0 ? String(f.device) : 'cpu' });
    bindTelemetry(metrics, worker.telemetry);
    // /readyz: it can take work of its run: welcomed into its training, or (jobs on) pulling its work queue.
    metrics.setReady(() => worker.training || jobs !== undefined);
    const srv = await metrics.serve(f.metricsPort, { tries: 100 });
    log(`worker ${id}: metrics on :${srv.port}/metrics`);
    jobs?.on('job', (e) => {
      if (!e.ok) return;
      if (e.kind === 'sample') {
        metrics.samplerImages.inc(e.items);
        metrics.samplerFunctionEvaluations.inc(e.nfe);
      } else metrics.likelihoodImages.inc(e.items);
    });
  }
  const stop = () => void worker.close({ ok: false, reason: 'signal', step: worker.step });
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  worker.start();
  jobs?.start();
  const res = await worker.done;
  await jobs?.close();
  c10d?.close();
  await factory.close();
  await nc.drain().catch(() => {});
  // (the worker said why in its "run stopped" line)
  if (!res.ok && res.reason !== 'signal') throw new AlreadySaid(`run ${f.run} stopped: ${res.reason}`);
  process.exit(0);
}

const program = newProgram('worker', 'a scoreflow training worker: one process per device');
addAuthOptions(
  program
    .command('start')
    .description('join a training run and compute until it ends')
    .requiredOption('--nats <url>', 'NATS server URL, e.g. nats://host:4222', process.env.SCOREFLOW_NATS_URL)
    .requiredOption('--run <id>', 'run id (as given to coordinator start)', process.env.SCOREFLOW_RUN)
    .option('--id <name>', 'worker id (default: host-device-pid)', process.env.SCOREFLOW_WORKER_ID)
    .option('--device <i>', 'GPU index (-1: CPU)', parseIntArg(-1, 4095), -1)
    .option(
      '--threads <t>',
      'compute threads (default: the cores this process may use: its affinity, capped by its cgroup CPU limit): pool threads on wasm/cpu, intra-op threads on torch',
      parseIntArg(1, 1024),
    )
    .addOption(backendOption())
    .option('--metrics-port <port>', 'serve /metrics, /healthz, /readyz from this port (or the next free one)', parsePort)
    .option('--no-jobs', "serve no sampling/likelihood jobs (by default: pulled from the run's work queue while not training)")
    .option(
      '--data-host <addr>',
      "address the c10d data plane (gloo/nccl) binds to and announces (default: $SCOREFLOW_DATA_HOST, or this host's address towards the NATS server)",
      process.env.SCOREFLOW_DATA_HOST,
    )
    .option('--data-iface <name>', 'network interface for Gloo (default: the one --data-host is on)')
    .option('--data-port <port>', "port of this worker's c10d store (0: any free one)", parsePort, 0)
    .option(
      '--collective-timeout <ms>',
      'a c10d all-reduce or rendezvous waiting this long on a peer fails (a dead peer fails it at once)',
      parseIntArg(100, 3_600_000),
      10_000,
    )
    .option('--no-c10d', 'offer only the nats transport (no c10d store, no direct worker-to-worker traffic)')
    .addOption(new Option('--heartbeat-ms <ms>').argParser(parseIntArg(50)).default(WORKER_DEFAULTS.heartbeatMs).hideHelp())
    .addOption(
      new Option('--parent-pipe', 'exit when stdin closes (set by coordinator start for the workers it spawns)').default(false).hideHelp(),
    ),
).action((f: WorkerFlags) => start(f));
await main(program);
