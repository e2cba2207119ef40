/**
 * What a coordinator keeps on disk in its run directory, so that a restarted coordinator
 * resumes: `cluster.json` (run id, incarnation, config, last checkpoint), the checkpoint
 * itself (`checkpoint.safetensors`, the Trainer's format, loadable by `scoreflow train
 * --resume`), and `train.jsonl` (one line per committed step). Writes are atomic.
 *
 * Which checkpoint a restart trusts. The checkpoint is written (rename) before cluster.json
 * is updated, so a coordinator killed between the two leaves a newer checkpoint than
 * cluster.json names. A training checkpoint carries what is needed to trust it on its own:
 * its step, the run id and state checksum the coordinator stamps into it, and the SHA-256 of
 * its tensor bytes. A state that carries none of that (the synthetic test objective's raw
 * bytes) is named in cluster.json as `pending` before it is renamed into place. The rule, in order:
 *   1. the file's SHA-256 equals the one cluster.json records, or its pending one: it is that checkpoint;
 *   2. else, a file whose own digest verifies and whose run id is this run's wins, whatever
 *      cluster.json says (its step and checksum are taken from the file);
 *   3. else, with no checkpoint recorded yet (a run started with --resume from another
 *      run's or `scoreflow train`'s checkpoint, killed before its first own one), a
 *      training checkpoint in the directory is the run's starting point, as it was then;
 *   4. else the restart refuses with one line: a corrupt file (digest mismatch), a
 *      checkpoint of another run, or (a file without a digest: written before checkpoints
 *      carried one, or the synthetic test objective's raw state) one that does not match
 *      cluster.json.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../core/io/atomic.js';
import { StepLog } from '../core/io/jsonl.js';
import { readSafetensorsBytes, withMetadata } from '../core/io/safetensors.js';
import { inspectCheckpoint } from '../core/train/checkpoint.js';

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
  /** A checkpoint being written that cannot vouch for itself (no digest): trusted if the file is it. */
  pending?: CheckpointRecord;
}

export const CHECKPOINT_FILE = 'checkpoint.safetensors';

function sha256(chunks: readonly Uint8Array[]): string {
  const h = createHash('sha256');
  for (const c of chunks) h.update(c);
  return h.digest('hex');
}

/** cluster.json of `dir` as written (undefined when there is none), without looking at the checkpoint. */
export function readRunRecord(dir: string): RunRecord | undefined {
  const path = join(dir, 'cluster.json');
  if (!existsSync(path)) return undefined;
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as RunRecord;
  } catch (e) {
    throw new Error(`${path} is unreadable (${(e as Error).message}): move it away to start a new run there`);
  }
}

export class RunDir {
  /** The run whose id is stamped into checkpoints (known from the record read or written). */
  private run?: string;
  /** The checkpoint bytes read() verified, so readCheckpoint need not read them again. */
  private verified?: { sha256: string; bytes: Uint8Array };
  /** The record last written, which writeCheckpoint extends with a pending entry. */
  private last?: RunRecord;
  private readonly steps: StepLog;

  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true });
    this.steps = new StepLog(join(dir, 'train.jsonl'));
  }

  /** train.jsonl, the committed steps' log. */
  get logPath(): string {
    return this.steps.path;
  }

  private get recordPath(): string {
    return join(this.dir, 'cluster.json');
  }

  /** The run record, its checkpoint entry replaced by the checkpoint the rule above trusts (or a one-line error). */
  read(): RunRecord | undefined {
    const record = readRunRecord(this.dir);
    if (!record) return undefined;
    const { pending, ...rec } = record;
    this.run = rec.run;
    const file = rec.checkpoint?.file ?? CHECKPOINT_FILE;
    const path = join(this.dir, file);
    if (!existsSync(path)) {
      if (rec.checkpoint)
        throw new Error(
          `${path} is missing, but ${this.recordPath} records a checkpoint at step ${rec.checkpoint.step} there: restore it, or move cluster.json away to start a new run`,
        );
      return rec;
    }
    const bytes = readSafetensorsBytes(path);
    const sha = sha256([bytes]);
    const trust = (c: CheckpointRecord): RunRecord => {
      this.verified = { sha256: sha, bytes };
      return { ...rec, checkpoint: c };
    };
    if (rec.checkpoint?.sha256 === sha) return trust(rec.checkpoint);
    if (pending?.sha256 === sha) return trust(pending);
    const info = inspectCheckpoint(bytes, path); // a digest mismatch throws here, naming the file
    const own = info && { file, step: info.step, checksum: info.checksum, sha256: sha };
    if (info?.digest === 'verified' && info.run === rec.run) return trust(own!);
    if (info && !rec.checkpoint) return trust(own!);
    if (!rec.checkpoint) return rec; // not a training checkpoint (e.g. a synthetic state of a run that never checkpointed)
    if (info?.digest === 'verified')
      throw new Error(
        `${path} is a checkpoint of run ${info.run ?? '(none recorded)'}, not of run ${rec.run}: move it away, or pass --run ${info.run ?? '…'} with another --out`,
      );
    throw new Error(
      `${path} does not match the SHA-256 recorded in cluster.json and carries no digest of its own to verify it: restore it or start a new run`,
    );
  }

  async write(rec: RunRecord): Promise<void> {
    this.run = rec.run;
    await writeFileAtomic(this.recordPath, JSON.stringify(rec, null, 2) + '\n');
    this.last = rec;
  }

  /**
   * Writes the checkpoint bytes atomically; returns its record (the caller then writes
   * cluster.json). A training checkpoint gets the run id and the state checksum stamped into
   * its metadata (its tensor bytes, and so its digest, unchanged), so that it can be trusted
   * without cluster.json; any other state is first named in cluster.json as pending.
   */
  async writeCheckpoint(bytes: Uint8Array, step: number, checksum: string): Promise<CheckpointRecord> {
    const file = join(this.dir, CHECKPOINT_FILE);
    const stamp = this.run !== undefined && inspectCheckpoint(bytes, 'the exported state') !== undefined;
    const chunks = stamp ? withMetadata(bytes, { run: this.run!, checksum }, 'the exported state') : [bytes];
    const rec = { file: CHECKPOINT_FILE, step, checksum, sha256: sha256(chunks) };
    if (!stamp && this.last) await this.write({ ...this.last, pending: rec });
    await writeFileAtomic(file, chunks);
    return rec;
  }

  /** The bytes of the checkpoint `c`; the step log is cut back to the steps it holds (the rest will be recomputed). */
  readCheckpoint(c: CheckpointRecord): Uint8Array {
    const path = join(this.dir, c.file);
    let bytes = this.verified?.sha256 === c.sha256 ? this.verified.bytes : undefined;
    if (!bytes) {
      bytes = readSafetensorsBytes(path);
      if (sha256([bytes]) !== c.sha256)
        throw new Error(`${path} does not match the SHA-256 recorded in cluster.json: restore it or start a new run`);
    }
    this.steps.cut((s) => s < c.step);
    return bytes;
  }

  /** Appends a committed step to train.jsonl; a step at or below the last one logged (a resume, a roll-back) first cuts the log back. */
  log(entry: { step: number } & Record<string, unknown>): void {
    this.steps.append(entry);
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
