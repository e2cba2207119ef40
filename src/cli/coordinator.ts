/**
 * `coordinator start --gpus N [--no-spawn] [--nats URL] [--run ID]` plus the training
 * flags of `scoreflow train`. Starts (unless --nats) a nats-server on a loopback port,
 * spawns N workers (unless --no-spawn), and drives the run to its end. Restarted on the
 * same --out directory, it resumes from the last checkpoint and the workers re-attach.
 */
import { existsSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { Option } from 'commander';
import { Coordinator } from '../coordinator/coordinator.js';
import { bindTelemetry } from '../metrics/index.js';
import { checkId } from '../protocol/subjects.js';
import { TRANSPORT_CHOICES, type TransportChoice } from '../protocol/transports.js';
import { c10dAvailable } from '../worker/collective/c10d.js';
import { addClusterOptions, withCluster, type ClusterFlags } from './cluster.js';
import { main, newProgram, parseIntArg } from './common.js';
import { registerJobCommands } from './jobs.js';
import { addTrainingOptions, CHECKPOINT, configFromFlags, type TrainFlags } from './train.js';

interface CoordinatorFlags extends TrainFlags, ClusterFlags {
  minWorkers?: number;
  checksumEvery: number;
  heartbeatTimeout: number;
  stepTimeout: number;
  transport: TransportChoice;
  synthetic?: string;
}

const log = (line: string) => process.stderr.write(line + '\n');

/** The run's config: the training flags, or (hidden, for tests and benchmarks) a synthetic objective. */
function runConfig(f: CoordinatorFlags): { json: string; batchSize: number } {
  if (f.synthetic) {
    const s = { synthetic: true, batchSize: f.batchSize, ...(JSON.parse(f.synthetic) as object) };
    return { json: JSON.stringify(s), batchSize: s.batchSize };
  }
  const cfg = configFromFlags(f);
  return { json: JSON.stringify(cfg), batchSize: cfg.batchSize };
}

async function start(f: CoordinatorFlags): Promise<void> {
  if (f.steps !== undefined && f.epochs !== undefined) throw new Error('give --steps or --epochs, not both');
  const out = resolve(f.out);
  const run = checkId('run', f.run ?? basename(out).replace(/[^A-Za-z0-9_-]/g, '_'));
  const hasRecord = existsSync(join(out, 'cluster.json'));
  const ckpt = join(out, CHECKPOINT);
  if (!hasRecord && existsSync(ckpt) && !f.resume) throw new Error(`${ckpt} exists; pass --resume to continue it, or choose another --out`);
  if (f.resume && !hasRecord && !existsSync(ckpt)) throw new Error(`--resume: no checkpoint at ${ckpt}`);
  const { json, batchSize } = runConfig(f);
  // Spawned workers share this machine's addon: a transport it lacks is refused before anything starts.
  if (f.spawn && (f.transport === 'gloo' || f.transport === 'nccl')) {
    const a = c10dAvailable(f.transport);
    if (!a.ok) throw new Error(`--transport ${f.transport} is unavailable here: ${a.why}`);
  }
  await withCluster(f, run, async (c) => {
    const coordinator = new Coordinator({
      nc: c.nc, run, outDir: out, configJson: json, batchSize, steps: f.steps, epochs: f.steps === undefined ? (f.epochs ?? 1) : undefined,
      resumeFrom: !hasRecord && f.resume ? readFileSync(ckpt) : undefined, minWorkers: f.minWorkers ?? (f.spawn ? f.gpus : 1),
      checksumEvery: f.checksumEvery, checkpointEvery: f.ckptEvery, heartbeatTimeoutMs: f.heartbeatTimeout, stepTimeoutMs: f.stepTimeout, transport: f.transport, log,
    });
    if (c.metrics) bindTelemetry(c.metrics, coordinator.telemetry, { globalBatch: batchSize, expectedWorkers: f.gpus });
    coordinator.telemetry.on('step', (r) => {
      if (r.step % 10 === 0) log(`step ${r.step + 1}: loss ${r.lossMean.toFixed(3)}, ${r.workers} worker(s), ${r.stepMs} ms, ${r.imagesPerSec.toFixed(1)} img/s`);
    });
    await coordinator.start();
    const stop = () => void coordinator.close();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    await c.spawnWorkers();
    const res = await coordinator.done;
    await c.nc.flush().catch(() => {});
    // Let spawned workers see Stop and exit on their own before we take the broker away.
    await c.workersExited(5000);
    if (!res.ok) throw new Error(`run ${run} stopped at step ${res.step}: ${res.reason}`);
    log(`coordinator: run ${run} done at step ${res.step}; checkpoint ${ckpt}`);
  });
}

const program = newProgram('coordinator', 'the coordinator of a scoreflow training cluster');
const cmd = program.command('start').description('run a training job over NATS workers (one per device)');
addClusterOptions(addTrainingOptions(cmd), 'they join with `worker start` (e.g. Kubernetes pods)')
  .option('--run <id>', 'run id (default: the name of --out)')
  .option('--min-workers <n>', 'workers to wait for before the first step (default: --gpus, or 1 with --no-spawn)', parseIntArg(1))
  .option('--checksum-every <n>', 'compare parameter checksums every n steps (0: never)', parseIntArg(0), 10)
  .option('--heartbeat-timeout <ms>', 'declare a silent worker lost after this long', parseIntArg(100), 3000)
  .option('--step-timeout <ms>', 're-plan a step that takes longer than this (and 10x the last one)', parseIntArg(100), 30_000)
  .addOption(new Option('--transport <t>', 'how gradients move: nats (through the broker), gloo (c10d, worker to worker), nccl (GPUs), auto (nccl, else gloo when every worker has it, else nats)').choices([...TRANSPORT_CHOICES]).default('auto'))
  .addOption(new Option('--synthetic <json>').hideHelp())
  .action((f: CoordinatorFlags) => start(f));
registerJobCommands(program);
await main(program);
