/**
 * What a coordinator keeps on disk in its run directory, so that a restarted coordinator
 * resumes: `cluster.json` (run id, incarnation, config, last checkpoint), the checkpoint
 * itself (`checkpoint.safetensors`, the Trainer's format, loadable by `scoreflow train
 * --resume`), and `train.jsonl` (one line per committed step). Writes are atomic.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../core/io/atomic.js';
import { sha256 } from '../protocol/state-transfer.js';

export interface CheckpointRecord {
  file: string;
  step: number;
  checksum: string;
  sha256: string;
}

export interface RunRecord {
  run: string;
  /** Bumped on every coordinator start; membership epochs are incarnation·2^16 + n. */
  incarnation: number;
  configJson: string;
  totalSteps?: number;
  checkpoint?: CheckpointRecord;
}

export const CHECKPOINT_FILE = 'checkpoint.safetensors';

export class RunDir {
  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true });
  }

  private get recordPath(): string {
    return join(this.dir, 'cluster.json');
  }

  read(): RunRecord | undefined {
    if (!existsSync(this.recordPath)) return undefined;
    try {
      return JSON.parse(readFileSync(this.recordPath, 'utf8')) as RunRecord;
    } catch (e) {
      throw new Error(`${this.recordPath} is unreadable (${(e as Error).message}): move it away to start a new run there`);
    }
  }

  async write(rec: RunRecord): Promise<void> {
    await writeFileAtomic(this.recordPath, JSON.stringify(rec, null, 2) + '\n');
  }

  /** Writes the checkpoint bytes atomically; returns its record (the caller then writes cluster.json). */
  async writeCheckpoint(bytes: Uint8Array, step: number, checksum: string): Promise<CheckpointRecord> {
    const file = join(this.dir, CHECKPOINT_FILE);
    await writeFileAtomic(file, bytes);
    return { file: CHECKPOINT_FILE, step, checksum, sha256: sha256(bytes) };
  }

  readCheckpoint(c: CheckpointRecord): Uint8Array {
    const path = join(this.dir, c.file);
    const bytes = readFileSync(path);
    if (sha256(bytes) !== c.sha256) throw new Error(`${path} does not match the SHA-256 recorded in cluster.json: restore it or start a new run`);
    return bytes;
  }

  log(entry: Record<string, unknown>): void {
    appendFileSync(join(this.dir, 'train.jsonl'), JSON.stringify(entry) + '\n');
  }
}

/** Step recorded in a safetensors training checkpoint's __metadata__ (undefined if none). */
export function checkpointStep(bytes: Uint8Array): number | undefined {
  if (bytes.byteLength < 8) return undefined;
  const len = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  if (len > bytes.byteLength - 8) return undefined;
  try {
    const head = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset + 8, len).toString('utf8')) as { __metadata__?: { step?: string } };
    const s = Number(head.__metadata__?.step);
    return Number.isSafeInteger(s) && s >= 0 ? s : undefined;
  } catch {
    return undefined;
  }
}
