/** A piscina worker thread of GradPool: its own backend instance, on one compute thread, and gradient engine. */
import { workerData } from 'node:worker_threads';
import { initBackend, type BackendName } from '../backend/index.js';
import { GradEngine } from './engine.js';
import type { ThreadInit, ThreadTask } from './pool.js';

const init = workerData as ThreadInit;
const backend = await initBackend(init.backend as BackendName, { threads: 1, log: () => {} });
const { n, h, w, buffer } = init.images;
const engine = new GradEngine(init.config, { n, h, w, data: new Float32Array(buffer) });
const params = new Float32Array(init.params);

/** The result is structured-cloned back (a 4 MB copy, small beside the compute). */
export default function gradSum(task: ThreadTask) {
  return engine.gradSum(params, task.version, task.step, task.from, task.to);
}

export function ready(): string {
  return backend;
}
