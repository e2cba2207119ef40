/**
 * Who owns a run directory. Two coordinators on one `--out` would both append to train.jsonl
 * and overwrite each other's checkpoints, so a coordinator first claims the directory:
 * `owner.json`, created atomically with O_EXCL (host, boot id, pid and the pid's start time,
 * when it started, when it last renewed the lease, the lease's length), renewed every third
 * of the lease while the coordinator runs and removed when it ends.
 *
 * A claim that finds the file refuses in one line naming the owner, unless the owner is
 * stale: on this host (same host name and boot id) its pid is gone or is another process
 * (another start time); elsewhere (a volume shared between hosts) its lease has not been
 * renewed for a whole lease (this compares wall clocks: hosts sharing a run directory need
 * them synchronised to well within a lease). A stale file is taken over by renaming it aside
 * (only one claimant can rename it) and creating a fresh one with O_EXCL.
 */
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { writeFileAtomicSync } from '../core/io/atomic.js';

export const OWNER_FILE = 'owner.json';

export interface OwnerRecord {
  host: string;
  bootId: string;
  pid: number;
  /** The pid's start time in clock ticks since boot (/proc/PID/stat field 22): tells a reused pid apart. */
  pidStart: string;
  started: string;
  /** Wall-clock ms of the last renewal. */
  renewed: number;
  leaseMs: number;
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

function pidStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // fields after the command name (which may hold spaces) start at field 3
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Why `o` no longer owns anything (undefined: it does). */
export function staleness(o: OwnerRecord, now = Date.now()): string | undefined {
  if (o.host === hostname() && o.bootId === bootId()) {
    const start = pidStart(o.pid);
    if (start === undefined) return `its process ${o.pid} is gone`;
    if (start !== o.pidStart) return `its pid ${o.pid} is now another process`;
    return undefined;
  }
  const age = now - o.renewed;
  return age > o.leaseMs
    ? `its lease was last renewed ${(age / 1000).toFixed(0)} s ago (lease ${(o.leaseMs / 1000).toFixed(0)} s)`
    : undefined;
}

export function describeOwner(o: OwnerRecord): string {
  return `coordinator pid ${o.pid} on host ${o.host} (started ${o.started}, lease renewed ${((Date.now() - o.renewed) / 1000).toFixed(0)} s ago)`;
}

function readOwner(path: string): { text: string; owner?: OwnerRecord } | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    const o = JSON.parse(text) as OwnerRecord;
    return { text, owner: typeof o.pid === 'number' && typeof o.renewed === 'number' ? o : undefined };
  } catch {
    return { text }; // torn or foreign: treated as stale below only if old enough
  }
}

export interface Ownership {
  readonly record: OwnerRecord;
  /** Stops renewing and removes owner.json if it is still ours. */
  release(): void;
}

/**
 * Claims `dir` for this process (see the file comment), or throws one line naming the owner.
 * `log` hears about a stale owner taken over.
 */
export function claimRunDir(dir: string, leaseMs: number, log: (line: string) => void): Ownership {
  const path = join(dir, OWNER_FILE);
  const me = (): OwnerRecord => ({
    host: hostname(),
    bootId: bootId(),
    pid: process.pid,
    pidStart: pidStart(process.pid) ?? '',
    started: new Date(startedAt).toISOString(),
    renewed: Date.now(),
    leaseMs,
  });
  const startedAt = Date.now();
  for (let attempt = 0; ; attempt++) {
    const rec = me();
    const text = JSON.stringify(rec, null, 2) + '\n';
    try {
      const fd = openSync(path, 'wx');
      try {
        writeSync(fd, text);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      return hold(path, rec, leaseMs);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 3) throw e;
    }
    const found = readOwner(path);
    if (!found) continue; // released meanwhile
    // (an unreadable file younger than a lease is most likely a claim being written right now)
    const young = !found.owner && Date.now() - statSync(path, { throwIfNoEntry: false })!.mtimeMs < leaseMs;
    if (young) throw new Error(`${dir} is being claimed by another coordinator (${path} is being written): use another --out`);
    const why = found.owner ? staleness(found.owner) : 'it is unreadable';
    if (!why) throw new Error(`${dir} is owned by ${describeOwner(found.owner!)}: stop that coordinator, or use another --out`);
    // Rename the stale file aside; whoever renames it takes over. Put back a file that changed meanwhile.
    const aside = `${path}.stale-${process.pid}`;
    try {
      renameSync(path, aside);
    } catch {
      continue;
    }
    const moved = readFileSync(aside, 'utf8');
    if (moved !== found.text) {
      renameSync(aside, path);
      continue;
    }
    unlinkSync(aside);
    log(
      `coordinator: ${dir}: taking over from a stale owner (${found.owner ? describeOwner(found.owner) : 'unreadable owner.json'}: ${why})`,
    );
  }
}

function hold(path: string, first: OwnerRecord, leaseMs: number): Ownership {
  let record = first;
  const renew = setInterval(
    () => {
      const cur = readOwner(path);
      // (someone took it over while we were not running for a whole lease: nothing of ours to renew)
      if (!cur?.owner || cur.owner.pid !== record.pid || cur.owner.host !== record.host) return;
      record = { ...record, renewed: Date.now() };
      try {
        writeFileAtomicSync(path, JSON.stringify(record, null, 2) + '\n');
      } catch {
        // a full disk: the lease ages; another host may take over after a whole lease
      }
    },
    Math.max(100, leaseMs / 3),
  );
  renew.unref();
  // However the process ends short of SIGKILL (an uncaught error, process.exit anywhere), the claim goes with it.
  const onExit = () => release();
  process.once('exit', onExit);
  const release = () => {
    process.removeListener('exit', onExit);
    clearInterval(renew);
    const cur = existsSync(path) ? readOwner(path) : undefined;
    if (cur?.owner?.pid === record.pid && cur.owner.host === record.host && cur.owner.bootId === record.bootId) {
      try {
        unlinkSync(path);
      } catch {
        // gone already
      }
    }
  };
  return {
    get record() {
      return record;
    },
    release,
  };
}
