/**
 * `coordinator start --gpus N [--no-spawn] [--nats URL] [--run ID]` plus the training
 * flags of `scoreflow train`. Starts (unless --nats) a nats-server on a loopback port,
 * spawns N workers (unless --no-spawn), and drives the run to its end. Restarted on the
 * same --out directory, it resumes from the last checkpoint and the workers re-attach.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { Coordinator, COORDINATOR_DEFAULTS } from '../coordinator/coordinator.js';
import { claimRunDir } from '../coordinator/owner.js';
import { readRunRecord } from '../coordinator/run-dir.js';
import { stepsPerEpoch } from '../core/data/batches.js';
import { isDatasetName, loadImages } from '../core/data/mnist.js';
import { readSafetensorsBytes } from '../core/io/safetensors.js';
import { inspectCheckpoint } from '../core/train/checkpoint.js';
import { parseDataset, trainConfig } from '../core/train/config.js';
import { bindTelemetry } from '../metrics/index.js';
import { checkId } from '../protocol/subjects.js';
import { TRANSPORT_CHOICES, type TransportChoice } from '../protocol/transports.js';
import { c10dAvailable } from '../worker/collective/c10d.js';
import { addClusterOptions, withCluster, type ClusterFlags } from './cluster.js';
import { AlreadySaid, checkOutputDir, main, newProgram, parseIntArg, removeStaleTemps } from './common.js';
import { registerJobCommands } from './jobs.js';
import { CheckpointWatcher } from './watch.js';
import { StepLog } from '../core/io/jsonl.js';
import { WATCH_DEFAULTS } from '../core/eval/watch.js';
import {
  addTrainingOptions,
  CHECKPOINT,
  checkBatchFits,
  checkTrainFlags,
  configFromFlags,
  refuseConflicts,
  syntheticConflicts,
  targetStep,
  trainConflicts,
  withCooldown,
  type TrainFlags,
} from './train-flags.js';

interface CoordinatorFlags extends TrainFlags, ClusterFlags {
  minWorkers?: number;
  checksumEvery: number;
  commitEvery: number;
  heartbeatTimeout: number;
  stepTimeout: number;
  maxRestarts: number;
  transport: TransportChoice;
  bucketKb: number;
  synthetic?: string;
}

const log = (line: string) => process.stderr.write(line + '\n');

/**
 * The run's config: what the run directory or the --resume checkpoint recorded when there is
 * one (flags given on the command line must agree with it), else the training flags, or
 * (hidden, for tests and benchmarks) a synthetic objective.
 */
function runConfig(
  f: CoordinatorFlags,
  cmd: Command,
  out: string,
  resumeFrom: Uint8Array | undefined,
): { json: string; batchSize: number; synthetic: boolean; recorded: boolean } {
  const ckpt = join(out, CHECKPOINT);
  let recorded: { json: string; what: string; holder: string } | undefined;
  const record = readRunRecord(out);
  if (record) recorded = { json: record.configJson, what: `run ${record.run} in ${out}`, holder: 'the run' };
  else if (resumeFrom) {
    const info = inspectCheckpoint(resumeFrom, ckpt);
    if (!info) throw new Error(`--resume: ${ckpt} is not a training checkpoint (no step in its metadata)`);
    if (info.configJson) recorded = { json: info.configJson, what: `--resume: ${ckpt}`, holder: 'the checkpoint' };
  }
  if (recorded) {
    const raw = JSON.parse(recorded.json) as { synthetic?: boolean; batchSize: number };
    if (raw.synthetic) {
      refuseConflicts(recorded.what, syntheticConflicts(cmd, f, raw.batchSize, recorded.holder));
      return { json: recorded.json, batchSize: raw.batchSize, synthetic: true, recorded: true };
    }
    const cfg = trainConfig(raw as Parameters<typeof trainConfig>[0]);
    refuseConflicts(recorded.what, trainConflicts(cmd, f, cfg, recorded.holder));
    return { json: JSON.stringify(cfg), batchSize: cfg.batchSize, synthetic: false, recorded: true };
  }
  if (f.synthetic) {
    const s = { synthetic: true, batchSize: f.batchSize, ...(JSON.parse(f.synthetic) as object) };
    return { json: JSON.stringify(s), batchSize: s.batchSize, synthetic: true, recorded: false };
  }
  checkTrainFlags(f);
  const cfg = configFromFlags(f);
  return { json: JSON.stringify(cfg), batchSize: cfg.batchSize, synthetic: false, recorded: false };
}

async function start(f: CoordinatorFlags, cmd: Command): Promise<void> {
  if (f.steps !== undefined && f.epochs !== undefined) throw new Error('give --steps or --epochs, not both');
  const out = resolve(f.out);
  const run = checkId('run', f.run ?? basename(out).replace(/[^A-Za-z0-9_-]/g, '_'));
  checkOutputDir('--out', f.out);
  const hasRecord = existsSync(join(out, 'cluster.json'));
  const ckpt = join(out, CHECKPOINT);
  if (!hasRecord && existsSync(ckpt) && !f.resume) throw new Error(`${ckpt} exists; pass --resume to continue it, or choose another --out`);
  if (f.resume && !hasRecord && !existsSync(ckpt)) throw new Error(`--resume: no checkpoint at ${ckpt}`);
  const resumeFrom = !hasRecord && f.resume ? readSafetensorsBytes(ckpt) : undefined;
  const { json: configJson, batchSize, synthetic, recorded } = runConfig(f, cmd, out, resumeFrom);
  let json = configJson;
  // Every worker of a plan takes a non-empty shard of the global batch (the coordinator also
  // keeps workers beyond the batch size out of the run: see Coordinator.onJoin).
  const minWorkers = f.minWorkers ?? (f.spawn ? f.gpus : 1);
  const batch = recorded ? `the run's global batch of ${batchSize} (from its checkpoint)` : `--batch-size ${batchSize}`;
  for (const [flag, n] of [
    ['--gpus', f.spawn ? f.gpus : 0],
    ['--min-workers', minWorkers],
  ] as const) {
    if (batchSize < n)
      throw new Error(
        `${batch} is smaller than ${flag} ${n}: each worker needs at least one sample of the global batch; use fewer workers${recorded ? '' : ` or --batch-size >= ${n}`}`,
      );
  }
  if (!synthetic) {
    // The workers load the data themselves; check it here first, so that a bad --data is one line, not N worker traces.
    // (Workers of --no-spawn may see files this machine does not, e.g. a volume mounted on their pods only.)
    const cfg = trainConfig(JSON.parse(json) as Parameters<typeof trainConfig>[0]);
    const { source, limit } = parseDataset(cfg.dataset);
    let n: number | undefined;
    if (f.spawn || isDatasetName(source) || existsSync(source)) {
      const data = loadImages(source, { limit });
      checkBatchFits(batchSize, data.n, data.source);
      n = data.n;
    } else log(`coordinator: ${source} is not on this machine; the workers load it (the batch size is not checked against it here)`);
    // A new run's cool-down ends at its last step (a resumed run keeps its recorded one: runConfig).
    if (!recorded && f.lrCooldown > 0) {
      if (f.steps === undefined && n === undefined)
        throw new Error(`--lr-cooldown with --epochs counts the run's steps from the data, which is not on this machine: give --steps`);
      json = JSON.stringify(withCooldown(cmd, f, cfg, targetStep(f, n === undefined ? 0 : stepsPerEpoch(n, batchSize))));
    }
  }
  // Spawned workers share this machine's addon: a transport it lacks is refused before anything starts.
  if (f.spawn && (f.transport === 'gloo' || f.transport === 'nccl')) {
    const a = c10dAvailable(f.transport);
    if (!a.ok) throw new Error(`--transport ${f.transport} is unavailable here: ${a.why}`);
  }
  // The run directory is ours alone (or this is one line naming its owner) before anything in it is touched.
  mkdirSync(out, { recursive: true });
  const ownership = claimRunDir(out, COORDINATOR_DEFAULTS.ownerLeaseMs, log);
  try {
    await run_(f, run, out, ckpt, json, batchSize, resumeFrom, minWorkers, synthetic);
  } finally {
    ownership.release();
  }
}

async function run_(
  f: CoordinatorFlags,
  run: string,
  out: string,
  ckpt: string,
  json: string,
  batchSize: number,
  resumeFrom: Uint8Array | undefined,
  minWorkers: number,
  synthetic: boolean,
): Promise<void> {
  removeStaleTemps('coordinator', out);
  await withCluster(f, run, async (c) => {
    const coordinator = new Coordinator({
      nc: c.nc,
      run,
      outDir: out,
      configJson: json,
      batchSize,
      steps: f.steps,
      epochs: f.steps === undefined ? (f.epochs ?? 1) : undefined,
      resumeFrom,
      minWorkers,
      checksumEvery: f.checksumEvery,
      checkpointEvery: f.ckptEvery,
      commitEvery: f.commitEvery,
      heartbeatTimeoutMs: f.heartbeatTimeout,
      stepTimeoutMs: f.stepTimeout,
      transport: f.transport,
      bucketFloats: f.bucketKb * 256,
      log,
    });
    if (c.metrics) bindTelemetry(c.metrics, coordinator.telemetry, { globalBatch: batchSize, expectedWorkers: f.gpus });
    coordinator.telemetry.on('step', (r) => {
      if (r.step % 10 === 0)
        log(
          `step ${r.step + 1}: loss ${r.lossMean.toFixed(3)}, ${r.workers} worker(s), ${r.stepMs} ms, ${r.imagesPerSec.toFixed(1)} img/s`,
        );
    });
    // --eval-every: scored from the checkpoints the run writes (cli/watch.ts), logged beside the steps
    const watcher =
      f.evalEvery && !synthetic
        ? new CheckpointWatcher(
            out,
            f.evalEvery,
            {
              evalImages: f.evalImages ?? WATCH_DEFAULTS.images,
              evalSamples: f.evalSamples ?? WATCH_DEFAULTS.samples,
              evalTol: f.evalTol ?? WATCH_DEFAULTS.tol,
              backend: f.backend,
            },
            log,
            (r) => {
              // train.jsonl counts steps from 0: the checkpoint of step S holds steps 0..S-1
              new StepLog(join(out, 'train.jsonl')).note({ step: r.step - 1, eval: r, time: new Date().toISOString() });
              c.metrics?.evalBitsPerDim.set(r.bpd);
              c.metrics?.evalStep.set(r.step);
              c.metrics?.evalDuration.set(r.bpd_seconds + r.sample_seconds);
            },
          )
        : undefined;
    if (watcher) coordinator.telemetry.on('checkpoint', (ck) => watcher.checkpoint(ck.step, ck.path));
    await coordinator.start();
    const stop = () => void coordinator.close();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    await c.spawnWorkers([], {
      maxRestarts: f.maxRestarts,
      restartBackoffMs: COORDINATOR_DEFAULTS.restartBackoffMs,
      onGiveUp: (id, running) => {
        if (running < minWorkers)
          coordinator.stop(
            `spawned worker ${id} was given up on after ${f.maxRestarts} restart(s): ${running} worker(s) left, fewer than --min-workers ${minWorkers}`,
          );
      },
    });
    const res = await coordinator.done;
    await watcher?.drain();
    c.endSupervision();
    await c.nc.flush().catch(() => {});
    // Let spawned workers see Stop and exit on their own before we take the broker away.
    await c.workersExited(5000);
    // (the coordinator said why in its STOPPING line: exit 1 without repeating it)
    if (!res.ok) throw new AlreadySaid(`run ${run} stopped at step ${res.step}: ${res.reason}`);
    log(`coordinator: run ${run} done at step ${res.step}; checkpoint ${ckpt}`);
  });
}

const program = newProgram('coordinator', 'the coordinator of a scoreflow training cluster');
const cmd = program.command('start').description('run a training job over NATS workers (one per device)');
addClusterOptions(addTrainingOptions(cmd), 'they join with `worker start` (e.g. Kubernetes pods)')
  .option('--run <id>', 'run id (default: the name of --out)')
  .option('--min-workers <n>', 'workers to wait for before the first step (default: --gpus, or 1 with --no-spawn)', parseIntArg(1, 4096))
  .option(
    '--checksum-every <n>',
    'compare parameter checksums every n steps (0: never)',
    parseIntArg(0, 1e9),
    COORDINATOR_DEFAULTS.checksumEvery,
  )
  .option(
    '--commit-every <n>',
    'commit (make durable, let workers drop older snapshots) every n steps; a failure re-runs at most n steps; checkpoints fall on commits',
    parseIntArg(1, 1e6),
    COORDINATOR_DEFAULTS.commitEvery,
  )
  .option(
    '--heartbeat-timeout <ms>',
    'declare a silent worker lost after this long (counting only time the coordinator ran and reached the broker)',
    parseIntArg(100, 3_600_000),
    COORDINATOR_DEFAULTS.heartbeatTimeoutMs,
  )
  .option(
    '--step-timeout <ms>',
    're-plan a step that takes longer than this (and 10x the last one)',
    parseIntArg(100, 86_400_000),
    COORDINATOR_DEFAULTS.stepTimeoutMs,
  )
  .option(
    '--max-restarts <n>',
    `restarts of a spawned worker that died, with a back-off from ${COORDINATOR_DEFAULTS.restartBackoffMs / 1000} s doubling each time, before giving up on it`,
    parseIntArg(0, 1000),
    COORDINATOR_DEFAULTS.maxRestarts,
  )
  .addOption(
    new Option(
      '--transport <t>',
      'how gradients move: nats (through the broker), gloo (c10d, worker to worker), nccl (GPUs), auto (nccl, else gloo when every worker has it, else nats)',
    )
      .choices([...TRANSPORT_CHOICES])
      .default(COORDINATOR_DEFAULTS.transport),
  )
  .option(
    '--bucket-kb <kib>',
    'gloo/nccl: every worker all-reduces the gradient in buckets of this many KiB while its backward pass runs (0: one all-reduce after it)',
    parseIntArg(0, 1 << 22),
    (COORDINATOR_DEFAULTS.bucketFloats * 4) / 1024,
  )
  .addOption(new Option('--synthetic <json>').hideHelp())
  .action((f: CoordinatorFlags, cmd: Command) => start(f, cmd));
registerJobCommands(program);
await main(program);
