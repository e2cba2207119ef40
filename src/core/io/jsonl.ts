/**
 * JSON-lines step logs (`scoreflow train`'s log.jsonl, the coordinator's train.jsonl): one
 * object per line with a numeric `step`, appended as steps finish. A resumed run recomputes
 * the steps after its checkpoint, so before it appends, the log is cut back to the steps the
 * checkpoint holds: each step then appears exactly once, in order.
 */
import { closeSync, existsSync, fstatSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { writeFileAtomicSync } from './atomic.js';

interface Line {
  text: string;
  step: number | undefined;
}

function readLines(path: string): Line[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((t) => t.trim() !== '')
    .map((text) => {
      try {
        const step = (JSON.parse(text) as { step?: unknown }).step;
        return { text, step: typeof step === 'number' ? step : undefined };
      } catch {
        // A line torn by a kill mid-append: it is no step's record.
        return { text, step: undefined };
      }
    });
}

/**
 * Keeps only the lines whose step satisfies `keep` (and drops torn lines), atomically: the
 * kept lines go to a temp file, fsync, rename. A no-op when nothing would change.
 * Returns the number of lines removed.
 */
export function cutJsonl(path: string, keep: (step: number) => boolean): number {
  const lines = readLines(path);
  const kept = lines.filter((l) => l.step !== undefined && keep(l.step));
  if (kept.length === lines.length) return 0;
  writeFileAtomicSync(path, kept.map((l) => l.text + '\n').join(''));
  return lines.length - kept.length;
}

/**
 * An append-only step log that never holds a step twice: when an entry's step is not above
 * the last one written (a resume, or a roll-back to a checkpoint), the lines from that step on
 * are cut away first.
 */
export class StepLog {
  private last: number | undefined;
  private loaded = false;

  constructor(readonly path: string) {}

  /** The last step recorded in the file (undefined when none). */
  lastStep(): number | undefined {
    if (!this.loaded) {
      this.loaded = true;
      for (const l of readLines(this.path)) if (l.step !== undefined) this.last = Math.max(this.last ?? -Infinity, l.step);
    }
    return this.last;
  }

  /** Cuts the log to the steps satisfying `keep` (see cutJsonl). */
  cut(keep: (step: number) => boolean): number {
    const removed = cutJsonl(this.path, keep);
    this.loaded = false;
    this.last = undefined;
    return removed;
  }

  /**
   * A line about a step already logged (an evaluation of its checkpoint: `{step, eval}`), appended
   * without cutting: it is kept or cut with that step's lines, and is not a step of its own.
   */
  note(entry: { step: number } & Record<string, unknown>): void {
    appendWhole(this.path, JSON.stringify(entry) + '\n');
  }

  append(entry: { step: number } & Record<string, unknown>): void {
    const last = this.lastStep();
    if (last !== undefined && entry.step <= last) this.cut((s) => s < entry.step);
    appendWhole(this.path, JSON.stringify(entry) + '\n');
    this.last = entry.step;
    this.loaded = true;
  }
}

/**
 * Appends `text` as a whole or not at all: a write that fails part-way (ENOSPC, EIO) is cut
 * back to the file's length before it, so a full disk never leaves a torn line; the error is
 * rethrown for the caller to say.
 */
function appendWhole(path: string, text: string): void {
  const fd = openSync(path, 'a');
  try {
    const size = fstatSync(fd).size;
    try {
      const buf = Buffer.from(text, 'utf8');
      for (let off = 0; off < buf.length;) off += writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      try {
        ftruncateSync(fd, size);
      } catch {
        // (nothing more to do: the reader drops a torn last line anyway)
      }
      throw e;
    }
  } finally {
    closeSync(fd);
  }
}
