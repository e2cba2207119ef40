/**
 * Fan-out throughput: samples/s and likelihood images/s of `coordinator sample|likelihood`
 * with 1 and 2 worker processes on this machine, beside the same work in one process.
 *
 * What is measured: the reference architecture (the parity fixture's weights, untrained, as a
 * bare state_dict) on wasm; heun with a few steps (fixed NFE) and likelihood at a loose
 * tolerance, so a run takes seconds. Workers are started and joined before the clock starts
 * (backend start-up excluded) and run a warm-up task; each task's time runs from queueing its
 * jobs to its last result, so it includes model loads (~0.1 s) and all queue traffic.
 * `single_process` is sampleRange / likelihoodRange over the same items and batches in this
 * process: the ceiling one worker could reach. On a 2-core machine 2 workers can at best
 * double it, and less when other processes share the cores.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectNats } from '../src/cluster/connect.js';
import { runTask } from '../src/coordinator/fanout.js';
import type { LikelihoodSpec, SampleSpec } from '../src/protocol/job-spec.js';
import { NatsServer } from '../src/cluster/nats-server.js';
import { initBackend } from '../src/core/backend/index.js';
import { loadImages } from '../src/core/data/mnist.js';
import { getFloat32, readSafetensors } from '../src/core/io/safetensors.js';
import { likelihoodRange } from '../src/core/likelihood.js';
import { fromTorchLayout, numParams, paramInfos } from '../src/core/model/params.js';
import { packagePath } from '../src/core/paths.js';
import { sampleRange } from '../src/core/sampling/index.js';
import { loadScoreModel } from '../src/core/score/net.js';
import { inferModelConfig, saveWeights } from '../src/core/model/weights.js';

export interface FanoutBenchOptions {
  quick?: boolean;
  /** Worker counts (default 1 and 2). */
  workers?: number[];
  log?: (line: string) => void;
}

const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

/** The parity fixture's ScoreNet parameters as a bare checkpoint the workers can load. */
async function referenceWeights(dir: string): Promise<string> {
  const file = readSafetensors(packagePath('test', 'fixtures', 'scorenet_parity.safetensors'));
  const model = inferModelConfig(file);
  const infos = paramInfos(model);
  const flat = new Float32Array(numParams(infos));
  for (const info of infos) flat.set(fromTorchLayout(info, getFloat32(file, info.name, info.torchShape)), info.offset);
  const path = join(dir, 'weights.safetensors');
  await saveWeights(path, model, flat);
  return path;
}

/** k worker processes of `run`, resolved once each has joined (its backend is up). */
async function startWorkers(url: string, run: string, k: number): Promise<ChildProcess[]> {
  const threads = String(Math.max(1, Math.floor(availableParallelism() / k)));
  const children = Array.from({ length: k }, (_, i) =>
    spawn(
      process.execPath,
      [
        packagePath('bin', 'worker.js'),
        'start',
        '--nats',
        url,
        '--run',
        run,
        '--id',
        `${run}-w${i}`,
        '--backend',
        'wasm',
        '--threads',
        threads,
      ],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    ),
  );
  await Promise.all(
    children.map(
      (c) =>
        new Promise<void>((resolve, reject) => {
          let text = '';
          c.stderr!.on('data', (b: Buffer) => {
            text += b.toString();
            if (text.includes('joining run')) resolve();
          });
          c.once('exit', (code) => reject(new Error(`bench worker exited (${code}): ${text.trim().split('\n').pop()}`)));
        }),
    ),
  );
  return children;
}

export async function benchFanout(opts: FanoutBenchOptions = {}): Promise<Record<string, unknown>> {
  const log = opts.log ?? (() => {});
  const quick = opts.quick ?? false;
  const dir = mkdtempSync(join(tmpdir(), 'scoreflow-bench-fanout-'));
  const ckpt = await referenceWeights(dir);
  const nSamples = quick ? 8 : 16;
  const nImages = quick ? 4 : 8;
  const sample: SampleSpec = { kind: 'sample', ckpt, raw: false, options: { sampler: 'heun', steps: 3, seed: 0, batchSize: 4 } };
  const likelihood: LikelihoodSpec = {
    kind: 'likelihood',
    ckpt,
    raw: false,
    data: 'test',
    limit: nImages,
    options: { seed: 0, hutchinson: 'gaussian', probes: 1, rtol: 1e-2, atol: 1e-2, eps: 1e-3, batchSize: 2 },
  };
  const out: Record<string, unknown> = {
    backend: 'wasm',
    cores: availableParallelism(),
    load_average_at_start: round(loadavg()[0]),
    model: 'reference ScoreNet architecture (parity fixture weights, untrained)',
    sample: { sampler: 'heun', steps: 3, nfe_per_image: 5, n: nSamples, batch_size: 4, jobs: nSamples / 4 },
    likelihood: { n: nImages, batch_size: 2, rtol_atol: 1e-2, hutchinson: 'gaussian x1', jobs: nImages / 2 },
  };
  try {
    log('fanout: single process');
    await initBackend('wasm', { log: () => {} });
    const model = loadScoreModel(ckpt);
    const images = loadImages('test', { limit: nImages });
    try {
      await sampleRange(model, { ...sample.options, steps: 1 }, 0, 4); // warm-up
      let t0 = performance.now();
      for (let a = 0; a < nSamples; a += 4) await sampleRange(model, sample.options, a, a + 4);
      const sps = nSamples / ((performance.now() - t0) / 1000);
      t0 = performance.now();
      for (let a = 0; a < nImages; a += 2) await likelihoodRange(model, images.data, a, a + 2, likelihood.options);
      out.single_process = { samples_per_s: round(sps, 3), likelihood_images_per_s: round(nImages / ((performance.now() - t0) / 1000), 3) };
    } finally {
      model.dispose();
    }
    const server = await NatsServer.start({ jetstream: true });
    const nc = await connectNats({ url: server.url, name: 'bench-fanout' });
    try {
      for (const k of opts.workers ?? [1, 2]) {
        const run = `benchfan${k}`;
        log(`fanout: ${k} worker process(es)`);
        const children = await startWorkers(server.url, run, k);
        try {
          // warm-up: every worker's first network calls (wasm kernels, allocations), off the clock
          await runTask({ nc, run, spec: { ...sample, options: { ...sample.options, steps: 1 } }, n: 8 * k });
          let t0 = performance.now();
          const s = await runTask({ nc, run, spec: sample, n: nSamples });
          const sSec = (performance.now() - t0) / 1000;
          t0 = performance.now();
          const l = await runTask({ nc, run, spec: likelihood, n: nImages });
          const lSec = (performance.now() - t0) / 1000;
          out[`workers_${k}`] = {
            samples_per_s: round(nSamples / sSec, 3),
            likelihood_images_per_s: round(nImages / lSec, 3),
            sample_jobs_per_worker: Object.fromEntries(s.workers),
            likelihood_jobs_per_worker: Object.fromEntries(l.workers),
          };
        } finally {
          for (const c of children) c.kill('SIGTERM');
          await Promise.all(children.map((c) => c.exitCode === null && new Promise((r) => c.once('exit', r))));
        }
      }
    } finally {
      await nc.drain().catch(() => {});
      await server.close();
    }
    const w1 = out.workers_1 as { samples_per_s: number; likelihood_images_per_s: number } | undefined;
    const w2 = out.workers_2 as { samples_per_s: number; likelihood_images_per_s: number } | undefined;
    if (w1 && w2)
      out.speedup_2_over_1 = {
        samples: round(w2.samples_per_s / w1.samples_per_s),
        likelihood: round(w2.likelihood_images_per_s / w1.likelihood_images_per_s),
      };
    out.load_average_at_end = round(loadavg()[0]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

// `node dist/bench/fanout.js [--quick]` prints the figures on its own.
if (import.meta.url === `file://${process.argv[1]}`) {
  const r = await benchFanout({ quick: process.argv.includes('--quick'), log: (l) => process.stderr.write(l + '\n') });
  process.stdout.write(JSON.stringify(r, null, 2) + '\n');
}
