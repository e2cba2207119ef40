/**
 * Child process for torch.test.ts: loads the torch backend (1 intra-op thread), then alternates a
 * small matMul (OpenBLAS sgemm) with a 50 ms idle gap, as a training loop alternates kernels with
 * JavaScript, and prints as JSON the wall time of that loop and the CPU time each thread other
 * than the main one spent in it (from /proc/self/task/<tid>/stat: utime + stime, in clock ticks
 * of 10 ms, Linux's USER_HZ).
 */
import { readFileSync, readdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import * as tf from '@tensorflow/tfjs';
import { registerTorchBackend } from '../../src/core/backend/torch/index.js';

function cpuMs(tid: string): number {
  // Fields after the command name, which is in parentheses and may hold spaces.
  const f = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

const snapshot = () =>
  new Map(
    readdirSync('/proc/self/task')
      .filter((t) => Number(t) !== process.pid)
      .map((t) => [t, cpuMs(t)]),
  );

await registerTorchBackend({ threads: 1 });
const a = tf.randomNormal([256, 256]);
tf.tidy(() => tf.matMul(a, a).dataSync()); // starts OpenBLAS's threads, if it has any
const before = snapshot();
const t0 = performance.now();
for (let k = 0; k < 20; k++) {
  tf.tidy(() => tf.matMul(a, a).dataSync());
  await sleep(50);
}
const wallMs = performance.now() - t0;
const threads = [...snapshot()].map(([tid, ms]) => ({ tid, cpuMs: ms - (before.get(tid) ?? 0) }));
process.stdout.write(`${JSON.stringify({ wallMs, openblasThreads: process.env.OPENBLAS_NUM_THREADS, threads })}\n`);
