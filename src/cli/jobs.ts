/**
 * `coordinator sample` and `coordinator likelihood`: the single-process `scoreflow sample` /
 * `scoreflow likelihood` fanned out over the worker pool. Same flags, same outputs (the
 * summary gains a `fanout` entry), plus the cluster flags of `coordinator start`. The work
 * is a task of index-range jobs on the run's JetStream work queue (src/coordinator/fanout.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import { QUEUE_DEFAULTS } from '../cluster/jetstream.js';
import { runTask, type TaskOptions, type TaskOutcome } from '../coordinator/fanout.js';
import { writeFileAtomic } from '../core/io/atomic.js';
import { loadImages } from '../core/data/mnist.js';
import { readNpy } from '../core/io/npy.js';
import { MODEL_DEFAULTS } from '../core/model/config.js';
import { resolveSampleOptions } from '../core/sampling/index.js';
import type { JobRange, LikelihoodSpec, SampleSpec } from '../protocol/job-spec.js';
import { payloadValues, type AssembledResult } from '../protocol/jobs.js';
import { checkId } from '../protocol/subjects.js';
import { addClusterOptions, withCluster, type Cluster, type ClusterFlags } from './cluster.js';
import { backendOption, checkOutDir, parseIntArg, removeStaleTemps } from './common.js';
import { addLikelihoodOptions, emitLikelihoodReport, likelihoodOptions, likelihoodReport, type LikelihoodFlags } from './likelihood.js';
import { progressBar } from './progress.js';
import {
  addSampleOptions,
  checkSampleOutput,
  outputPaths,
  sampleOptions,
  sampleSummary,
  writeSampleSet,
  type SampleFlags,
} from './sample.js';

interface JobFlags extends ClusterFlags {
  ackWait: number;
  maxDeliver: number;
  jobBatches: number;
}

const log = (line: string) => process.stderr.write(line + '\n');

/** The cluster of `kind`'s task: its workers' run id (a fresh one for spawned workers), workers spawned at once. */
async function withJobCluster<T>(f: JobFlags, kind: string, fn: (c: Cluster) => Promise<T>): Promise<T> {
  const run = checkId('run', f.run ?? (f.spawn ? `${kind}-${randomBytes(4).toString('hex')}` : missingRun()));
  return withCluster(f, run, async (c) => {
    c.metrics?.setReady(true);
    if (f.spawn) await c.spawnWorkers();
    else log(`coordinator: ${kind} on the workers of run ${run} (start more with: ${c.joinCommand})`);
    return fn(c);
  });
}

function missingRun(): never {
  throw new Error('--no-spawn needs --run ID: the run id the workers were started with (worker start --run ID)');
}

/** runTask with a progress bar (jobs, items, ETA) and the coordinator's metrics. */
async function runWithProgress(label: string, f: JobFlags, c: Cluster, task: Omit<TaskOptions, 'nc' | 'run'>): Promise<TaskOutcome> {
  const bar = progressBar(label, ' | jobs {jobsDone}/{jobs}');
  bar.start(task.n, 0, { jobsDone: 0, jobs: '?' });
  try {
    return await runTask({
      ...task,
      nc: c.nc,
      run: c.run,
      batchesPerJob: f.jobBatches,
      queue: { ackWaitMs: f.ackWait * 1000, maxDeliver: f.maxDeliver },
      log: (line) => {
        // keep the bar intact on a terminal: log above it
        bar.stop();
        log(line);
        bar.start(task.n, bar.getProgress() * task.n);
      },
      onJob: (job, p) => {
        bar.update(p.itemsDone, { jobsDone: p.jobsDone, jobs: p.jobs });
        task.onJob?.(job, p);
      },
      onQueueDepth: (waiting) => c.metrics?.jobQueueDepth.set(waiting),
    });
  } finally {
    bar.stop();
  }
}

function fanoutInfo(run: string, o: TaskOutcome) {
  return { run, task: o.task, jobs: o.jobs.length, workers: Object.fromEntries(o.workers), redelivered: o.redelivered };
}

// ---- coordinator sample -------------------------------------------------------------

async function sample(f: SampleFlags & JobFlags, cmd: Command): Promise<void> {
  const paths = outputPaths(f.out);
  const opts = sampleOptions(f);
  const resolved = resolveSampleOptions(opts);
  if (f.latent !== undefined && f.sampler !== 'ode') throw new Error(`--latent needs --sampler ode (got ${f.sampler})`);
  let n = f.n;
  if (f.latent !== undefined) {
    const rows = readNpy(f.latent).shape[0];
    const nGiven = cmd.getOptionValueSource('n') === 'cli';
    if (nGiven && f.n > rows) throw new Error(`--n ${f.n} exceeds the ${rows} latents in ${f.latent}`);
    n = nGiven ? f.n : rows;
  }
  if (!(n >= 1)) throw new Error(`nothing to sample: --n is ${n}`);
  // An output too large for this machine is one line before any worker starts. (The workers
  // load and verify the checkpoint; ScoreNet images are always MODEL_DEFAULTS' 28x28.)
  checkSampleOutput(f.out, n, MODEL_DEFAULTS.height, MODEL_DEFAULTS.width);
  removeStaleTemps('coordinator', dirname(f.out));
  // Workers read the checkpoint (and latents) themselves: absolute paths, on a shared file system or volume.
  const spec: SampleSpec = {
    kind: 'sample',
    ckpt: resolve(f.ckpt),
    raw: f.raw,
    options: { ...opts, batchSize: resolved.batchSize },
    latent: f.latent !== undefined ? resolve(f.latent) : undefined,
  };
  log(`coordinator sample: ${f.sampler}, ${n} images from ${f.ckpt}, seed ${f.seed}, batch ${resolved.batchSize}`);
  await withJobCluster(f, 'sample', async (c) => {
    const t0 = performance.now();
    const o = await runWithProgress('sample', f, c, { spec, n });
    const seconds = (performance.now() - t0) / 1000;
    const [h, w, ch] = o.shape;
    const summary = {
      ...sampleSummary(f, {
        n,
        resolved,
        nfe: o.nfe,
        calls: o.calls,
        seconds,
        backend: [...o.backends].join(','),
        weights: [...o.weights].join(','),
        paths,
      }),
      fanout: fanoutInfo(c.run, o),
    };
    await writeSampleSet(paths, [n, ch, h, w], o.values as Float32Array, summary);
    process.stdout.write(JSON.stringify(summary) + '\n');
  });
}

// ---- coordinator likelihood ---------------------------------------------------------

/**
 * Finished jobs of a likelihood task, kept beside --out so that an interrupted task resumes
 * without recomputing them: OUT.jobs/KEY/FROM-TO.json, one file per job, each written atomically
 * as its result arrives. KEY hashes everything a value depends on: the spec (options, data
 * name, limit), the job count, the checkpoint's bytes and the images' bytes; another checkpoint
 * or flag is another folder. The folder is removed once the report is written.
 */
class JobJournal {
  readonly dir: string;
  constructor(out: string, spec: LikelihoodSpec, n: number, images: Float32Array) {
    const h = createHash('sha256').update(JSON.stringify({ spec, n }));
    h.update(readFileSync(spec.ckpt));
    h.update(new Uint8Array(images.buffer, images.byteOffset, images.byteLength));
    this.dir = join(out.replace(/\.json$/, '.jobs'), h.digest('hex').slice(0, 16));
  }

  private path(j: { from: number; to: number }): string {
    return join(this.dir, `${j.from}-${j.to}.json`);
  }

  /** The stored result of a job of this range, if a valid one is there. */
  load(j: JobRange): AssembledResult | undefined {
    const p = this.path(j);
    if (!existsSync(p)) return undefined;
    try {
      const r = JSON.parse(readFileSync(p, 'utf8')) as Omit<AssembledResult, 'payload'> & { payload: string };
      if (r.from !== j.from || r.to !== j.to || r.nfe.length !== j.to - j.from) return undefined;
      return { ...r, index: j.index, delivery: 1, payload: new Uint8Array(Buffer.from(r.payload, 'base64')) };
    } catch {
      return undefined; // unreadable: computed again
    }
  }

  async save(r: AssembledResult): Promise<void> {
    mkdirSync(this.dir, { recursive: true });
    await writeFileAtomic(this.path(r), JSON.stringify({ ...r, payload: Buffer.from(r.payload).toString('base64') }));
  }

  remove(): void {
    rmSync(dirname(this.dir), { recursive: true, force: true });
  }
}

async function likelihood(f: LikelihoodFlags & JobFlags): Promise<void> {
  if (f.out !== undefined && !f.out.endsWith('.json')) throw new Error(`--out must name a .json file, got '${f.out}'`);
  if (f.out !== undefined) checkOutDir('--out', f.out);
  // The coordinator reads the split once, for its size and the report's source; workers read it too.
  const images = loadImages(f.data ?? f.split, { limit: f.limit });
  if (images.n < 1) throw new Error(`no images in ${images.source}: nothing to evaluate`);
  const spec: LikelihoodSpec = {
    kind: 'likelihood',
    ckpt: resolve(f.ckpt),
    raw: f.raw,
    data: f.data !== undefined ? images.source : f.split,
    limit: f.limit,
    options: likelihoodOptions(f),
  };
  if (!existsSync(spec.ckpt)) throw new Error(`${f.ckpt}: no such checkpoint`);
  const journal = f.out !== undefined ? new JobJournal(f.out, spec, images.n, images.data) : undefined;
  if (journal) removeStaleTemps('coordinator', journal.dir);
  log(
    `coordinator likelihood: ${images.n} images of ${images.source}, ${f.dequantise} dequantisation, ${f.hutchinson}${f.hutchinson === 'exact' ? '' : ` x${f.probes}`}, rtol ${f.rtol}, atol ${f.atol}` +
      (journal ? `; finished jobs kept in ${journal.dir} until the report is written` : ''),
  );
  let reused = 0;
  await withJobCluster(f, 'likelihood', async (c) => {
    // Running mean bits/dim over the images done so far, for the gauge.
    let sum = 0;
    let count = 0;
    const t0 = performance.now();
    const saves: Promise<void>[] = [];
    const o = await runWithProgress('likelihood', f, c, {
      spec,
      n: images.n,
      done: (j) => {
        const r = journal?.load(j);
        if (r) reused++;
        return r;
      },
      onJob: (job) => {
        const m = job.to - job.from;
        const v = payloadValues(job.payload, Float64Array);
        for (let i = 0; i < m; i++) sum += v[i];
        count += m;
        c.metrics?.likelihoodBitsPerDim.set(sum / count);
        if (journal && job.attempt !== 'journal') saves.push(journal.save({ ...job, attempt: 'journal' }));
      },
    });
    await Promise.all(saves);
    if (reused > 0) log(`coordinator likelihood: ${reused} job(s) taken from ${journal!.dir}, not recomputed`);
    const bpd = o.values as Float64Array;
    const seconds = (performance.now() - t0) / 1000;
    const report = {
      ...likelihoodReport(f, {
        bpd,
        probeVar: o.probeVar!,
        nfe: o.nfe,
        n: images.n,
        source: images.source,
        weights: [...o.weights].join(','),
        seconds,
        backend: [...o.backends].join(','),
      }),
      fanout: { ...fanoutInfo(c.run, o), reused_jobs: reused },
    };
    await emitLikelihoodReport(f, report);
    journal?.remove();
  });
}

// ---- registration -------------------------------------------------------------------

function addJobOptions(cmd: Command): Command {
  return addClusterOptions(cmd, 'use those already running for --run (worker start --nats URL --run ID)')
    .addOption(backendOption())
    .option('--run <id>', 'run id whose workers do the jobs (default: a fresh one for the spawned workers)')
    .option('--threads <t>', 'compute threads per spawned worker', parseIntArg(1))
    .option('--job-batches <k>', 'whole batches per job (jobs are cut at --batch-size boundaries)', parseIntArg(1), 1)
    .option('--ack-wait <s>', 'redeliver a job whose worker fell silent for this long', parseIntArg(1), QUEUE_DEFAULTS.ackWaitMs / 1000)
    .option('--max-deliver <n>', 'give a job up after this many deliveries', parseIntArg(1), QUEUE_DEFAULTS.maxDeliver);
}

export function registerJobCommands(program: Command): void {
  addJobOptions(
    addSampleOptions(program.command('sample').description('scoreflow sample, fanned out over the workers (same flags and outputs)')),
  ).action((f: SampleFlags & JobFlags, cmd: Command) => sample(f, cmd));
  addJobOptions(
    addLikelihoodOptions(
      program.command('likelihood').description('scoreflow likelihood, fanned out over the workers (same flags and outputs)'),
    ),
  ).action((f: LikelihoodFlags & JobFlags) => likelihood(f));
}
