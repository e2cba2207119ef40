/**
 * How many cores this process may compute on: Node's `availableParallelism()` (the CPU affinity
 * mask) capped by the CPU limit of its cgroup, which a container runtime sets from `--cpus` or a
 * Kubernetes `limits.cpu` and which Node does not read. Every default thread count (the torch
 * backend's intra-op threads, the piscina pool, spawned workers' shares) comes from here, so a
 * pod limited to 4 CPUs on a 64-core node runs 4 threads, not 64 throttled ones.
 *
 * The limit is read from cgroup v2 (`cpu.max`: "QUOTA PERIOD" or "max PERIOD") or v1
 * (`cpu/cpu.cfs_quota_us` and `cpu.cfs_period_us`, quota -1 for none) under `root`, as a
 * container sees its own cgroup there; a fractional limit rounds down (2.5 CPUs: 2 threads),
 * never below 1.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** The cgroup's CPU limit in CPUs (quota / period), or undefined where there is none or none is readable. */
export function cgroupCpuLimit(root = '/sys/fs/cgroup'): number | undefined {
  const v2 = read(join(root, 'cpu.max'));
  if (v2 !== undefined) {
    const [quota, period] = v2.split(/\s+/);
    return quota === 'max' ? undefined : ratio(Number(quota), Number(period));
  }
  for (const dir of ['cpu', 'cpu,cpuacct']) {
    const quota = read(join(root, dir, 'cpu.cfs_quota_us'));
    const period = read(join(root, dir, 'cpu.cfs_period_us'));
    if (quota !== undefined && period !== undefined) return Number(quota) < 0 ? undefined : ratio(Number(quota), Number(period));
  }
  return undefined;
}

function ratio(quota: number, period: number): number | undefined {
  return Number.isFinite(quota) && Number.isFinite(period) && quota > 0 && period > 0 ? quota / period : undefined;
}

/** Cores this process may compute on: the affinity mask capped by the cgroup's CPU limit (rounded down, at least 1). */
export function computeCores(root?: string): number {
  const limit = cgroupCpuLimit(root);
  const cores = availableParallelism();
  return limit === undefined ? cores : Math.max(1, Math.min(cores, Math.floor(limit)));
}
