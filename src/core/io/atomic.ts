/**
 * Atomic file writes: a reader (or a process restarted after kill -9) sees either the
 * old file or the complete new one, never a prefix.
 *
 * Recipe: write a temp file in the target's directory (rename is only atomic within one
 * file system), fsync it (so the data are on disk before the name points at them), rename
 * it over the target, then fsync the directory (so the rename itself survives a crash).
 *
 * Temp files are named `.<name>.tmp-<pid>-<hex>`: hidden, next to their target, and
 * carrying the writer's pid, so `cleanAtomicTemps` can tell leftovers of dead writers.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** What can be written: text (UTF-8), bytes, or a list of byte chunks written in order. */
export type AtomicData = string | Uint8Array | readonly Uint8Array[];

/** One write(2) at most: Node refuses lengths past 2 GiB - 1, and a multi-GB output comes in one chunk. */
const MAX_WRITE = 1 << 30;

const TEMP_RE = /^\.(.+)\.tmp-(\d+)-[0-9a-f]{8}$/;

/** The temp path for `target`: same directory, recognisable name, unique per call. */
export function tempPathFor(target: string): string {
  return join(dirname(target), `.${basename(target)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/** If `name` is one of our temp files, the target name and writer pid; else null. */
export function parseTempName(name: string): { target: string; pid: number } | null {
  const m = TEMP_RE.exec(name);
  return m ? { target: m[1], pid: Number(m[2]) } : null;
}

function chunks(data: AtomicData): readonly Uint8Array[] {
  if (typeof data === 'string') return [Buffer.from(data, 'utf8')];
  if (data instanceof Uint8Array) return [data];
  return data;
}

/** "CODE: message" of an errno error, once: Node's own messages already start with the code ("ENOSPC: no space left ..."). */
export function describeError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  const msg = String(e?.message ?? err).split('\n')[0];
  return e?.code && !msg.startsWith(`${e.code}:`) ? `${e.code}: ${msg}` : msg;
}

function fail(target: string, what: string, err: unknown): never {
  throw new Error(`${target}: atomic write failed (${what}): ${describeError(err)}`);
}

/** fsync a directory so a rename in it is durable; some file systems refuse, which is harmless. */
function fsyncDirSync(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch (err) {
    if (!['EINVAL', 'EPERM', 'EISDIR', 'EBADF', 'ENOTSUP'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

function writeTempSync(target: string, data: AtomicData): string {
  const tmp = tempPathFor(target);
  let fd: number;
  try {
    fd = fs.openSync(tmp, 'wx', 0o666);
  } catch (err) {
    fail(target, 'create temp file', err);
  }
  try {
    for (const c of chunks(data)) {
      // writeSync may write less than asked (signals, pipes); loop until the chunk is out
      for (let off = 0; off < c.byteLength;) off += fs.writeSync(fd, c, off, Math.min(c.byteLength - off, MAX_WRITE));
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  } catch (err) {
    try {
      fs.closeSync(fd);
    } catch {
      /* already closed */
    }
    removeQuietlySync(tmp);
    fail(target, 'write temp file', err);
  }
  return tmp;
}

function removeQuietlySync(path: string): void {
  try {
    fs.unlinkSync(path);
  } catch {
    /* best effort */
  }
}

/** Write `data` to `path` atomically (see the module comment). Blocks the event loop. */
export function writeFileAtomicSync(path: string, data: AtomicData): void {
  writeFilesAtomicSync([[path, data]]);
}

/**
 * Write several files, all temps first, then all renames: if any write fails, no target
 * is touched and every temp is removed. (A failure during the renames themselves, which
 * needs e.g. a target turned into a directory meanwhile, can leave some new and some old
 * files, but each of them complete.)
 */
export function writeFilesAtomicSync(files: Iterable<readonly [string, AtomicData]>): void {
  const list = [...files];
  const temps: string[] = [];
  try {
    for (const [target, data] of list) temps.push(writeTempSync(target, data));
  } catch (err) {
    temps.forEach(removeQuietlySync);
    throw err;
  }
  renameAllSync(
    list.map(([t]) => t),
    temps,
  );
}

function renameAllSync(targets: string[], temps: string[]): void {
  for (let i = 0; i < targets.length; i++) {
    try {
      fs.renameSync(temps[i], targets[i]);
    } catch (err) {
      temps.slice(i).forEach(removeQuietlySync);
      fail(targets[i], 'rename into place', err);
    }
  }
  for (const dir of new Set(targets.map((t) => dirname(t)))) {
    try {
      fsyncDirSync(dir);
    } catch (err) {
      fail(dir, 'fsync directory', err);
    }
  }
}

// ------------------------------------------------------------------ async versions

async function writeTemp(target: string, data: AtomicData): Promise<string> {
  const tmp = tempPathFor(target);
  const fh = await open(tmp, 'wx', 0o666).catch((err) => fail(target, 'create temp file', err));
  try {
    for (const c of chunks(data)) {
      for (let off = 0; off < c.byteLength;) off += (await fh.write(c, off, Math.min(c.byteLength - off, MAX_WRITE))).bytesWritten;
    }
    await fh.sync();
    await fh.close();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    fail(target, 'write temp file', err);
  }
  return tmp;
}

/** Async `writeFileAtomicSync`: the event loop keeps running during the write and fsync. */
export async function writeFileAtomic(path: string, data: AtomicData): Promise<void> {
  await writeFilesAtomic([[path, data]]);
}

/** Async `writeFilesAtomicSync`: all temps first (in parallel), then all renames. */
export async function writeFilesAtomic(files: Iterable<readonly [string, AtomicData]>): Promise<void> {
  const list = [...files];
  const results = await Promise.allSettled(list.map(([t, d]) => writeTemp(t, d)));
  const temps = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await Promise.all(temps.map((t) => unlink(t).catch(() => undefined)));
    throw failed.reason;
  }
  for (let i = 0; i < list.length; i++) {
    await rename(temps[i], list[i][0]).catch(async (err) => {
      await Promise.all(temps.slice(i).map((t) => unlink(t).catch(() => undefined)));
      fail(list[i][0], 'rename into place', err);
    });
  }
  for (const dir of new Set(list.map(([t]) => dirname(t)))) {
    try {
      fsyncDirSync(dir);
    } catch (err) {
      fail(dir, 'fsync directory', err);
    }
  }
}

/**
 * Whether process `pid` runs on this host. A zombie (killed, not yet reaped: what a SIGKILLed
 * process's children become when nobody waits for them) counts as dead.
 */
export function processAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
  try {
    // /proc/PID/stat: "pid (comm) S ...": the state follows the last ')' (comm may hold spaces and parens).
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return true; // no /proc (not Linux): kill(pid, 0) said it exists
  }
}

/**
 * Remove leftover temp files in `dir` (from writers killed mid-write). A temp is removed
 * when its writer pid is not running on this host, or, with `olderThanMs`, when it is
 * older than that (pids say nothing across hosts sharing a volume). With `ownAreStale`
 * (a command that has written nothing yet), temps carrying this process's pid go too: in a
 * container every restart is pid 1, so a dead predecessor's temps carry our pid.
 * Returns the removed paths.
 */
export function cleanAtomicTemps(dir: string, opts: { olderThanMs?: number; ownAreStale?: boolean } = {}): string[] {
  const removed: string[] = [];
  for (const name of fs.readdirSync(dir)) {
    const t = parseTempName(name);
    if (!t) continue;
    const own = t.pid === process.pid;
    if (own && !opts.ownAreStale) continue;
    const path = join(dir, name);
    const old = opts.olderThanMs !== undefined && Date.now() - fs.statSync(path).mtimeMs > opts.olderThanMs;
    if (own || old || !processAlive(t.pid)) {
      removeQuietlySync(path);
      removed.push(path);
    }
  }
  return removed;
}
