/**
 * Limits on what a command reads and writes, checked before the work starts, so that bad
 * input is one line instead of a process that reads /dev/zero forever, allocates past the
 * machine's memory, or fills the disk: an input must be a regular file of a plausible size
 * that fits in memory; an output must fit in memory and on its file system.
 */
import { statSync, statfsSync, type Stats } from 'node:fs';
import { freemem } from 'node:os';

/** "17.3 MB": sizes in messages. */
export function formatBytes(n: number): string {
  if (n < 1e3) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB', 'PB'];
  let i = -1;
  let v = n;
  while (v >= 1e3 && i < units.length - 1) {
    v /= 1e3;
    i++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/**
 * Memory this process may still take: the kernel's estimate of available memory (MemAvailable,
 * which counts reclaimable page cache), bounded by a cgroup limit where one applies.
 */
export function availableMemory(): number {
  const p = process as NodeJS.Process & { availableMemory?: () => number };
  const a = typeof p.availableMemory === 'function' ? p.availableMemory() : 0;
  return Math.min(a > 0 ? a : Infinity, freemem());
}

function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isFIFO()) return 'a named pipe';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/**
 * Throws one line unless `path` is a regular file (`what`: 'an IDX file', for the messages) of at most `maxBytes` that fits in the
 * memory available now (`memoryFactor` × its size: what reading and decoding it takes).
 * Returns its size. Devices and pipes are refused outright: their size says nothing.
 */
export function checkInputFile(path: string, what: string, maxBytes: number, memoryFactor = 1): number {
  let st: Stats;
  try {
    st = statSync(path);
  } catch (err) {
    throw new Error(`${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  if (!st.isFile()) throw new Error(`${path}: is ${kindOf(st)}, not a regular file; expected ${what}`);
  if (st.size > maxBytes)
    throw new Error(`${path}: ${formatBytes(st.size)} is too large for ${what} (at most ${formatBytes(maxBytes)}); wrong file?`);
  const need = st.size * memoryFactor;
  const free = availableMemory();
  if (need > free)
    throw new Error(`${path}: reading it (${what}) needs about ${formatBytes(need)} of memory, ${formatBytes(free)} is available`);
  return st.size;
}

/** Free bytes for an unprivileged writer on the file system holding `dir` (Infinity where statfs is not supported). */
export function freeDisk(dir: string): number {
  try {
    const s = statfsSync(dir);
    return s.bavail * s.bsize;
  } catch {
    return Infinity;
  }
}
