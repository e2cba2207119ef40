/**
 * Whole training states (Trainer.exportState bytes) over NATS: cut into chunks under
 * max_payload, each carrying the transfer id, its index, the count, the total size and the
 * SHA-256 of the whole, so the receiver can check it got exactly what was sent.
 */
import { createHash } from 'node:crypto';
import type { NatsConnection } from 'nats';
import { CHUNK_HEADROOM } from './chunking.js';
import { encode, WireError, type EnvelopeOf, type HeaderIn } from './envelope.js';
import type { Sender } from './sequence.js';

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Publishes `bytes` as transfer `transfer` to `subject`; returns the bytes sent. */
export async function sendState(
  nc: NatsConnection,
  subject: string,
  header: HeaderIn,
  sender: Sender,
  transfer: string,
  bytes: Uint8Array,
  checksum: string,
): Promise<number> {
  const per = nc.info!.max_payload - CHUNK_HEADROOM;
  const count = Math.max(1, Math.ceil(bytes.byteLength / per));
  const hash = sha256(bytes);
  let sent = 0;
  for (let i = 0; i < count; i++) {
    const data = bytes.subarray(i * per, Math.min(bytes.byteLength, (i + 1) * per));
    const msg = encode(sender.stamp(header), 'state', {
      transfer,
      index: i,
      count,
      totalBytes: bytes.byteLength,
      data,
      sha256: hash,
      checksum,
    });
    nc.publish(subject, msg);
    sent += msg.byteLength;
    // let the socket drain between big chunks instead of buffering the whole state
    if (i % 8 === 7) await nc.flush();
  }
  await nc.flush();
  return sent;
}

export interface ReceivedState {
  transfer: string;
  step: number;
  bytes: Uint8Array;
  checksum: string;
  from: string;
}

/** Reassembles transfers; keeps at most `maxOpen` incomplete ones (oldest dropped). */
export class StateInbox {
  private open = new Map<string, { parts: (Uint8Array | undefined)[]; left: number; first: EnvelopeOf<'state'> }>();

  constructor(
    private readonly maxOpen = 2,
    private readonly maxBytes = 2 ** 31,
  ) {}

  /** Adds a chunk; returns the state when complete. Throws WireError('bad_state') on an inconsistent chunk. */
  add(env: EnvelopeOf<'state'>): ReceivedState | undefined {
    const c = env.body;
    if (!c.transfer || c.count < 1 || c.index >= c.count || c.totalBytes > this.maxBytes)
      throw new WireError('bad_state', `bad state chunk ${c.index}/${c.count}`);
    let t = this.open.get(c.transfer);
    if (!t) {
      if (this.open.size >= this.maxOpen) this.open.delete(this.open.keys().next().value!);
      t = { parts: new Array(c.count), left: c.count, first: env };
      this.open.set(c.transfer, t);
    }
    const f = t.first.body;
    if (f.count !== c.count || f.totalBytes !== c.totalBytes || f.sha256 !== c.sha256 || t.first.step !== env.step) {
      this.open.delete(c.transfer);
      throw new WireError('bad_state', `state chunk ${c.index} of transfer ${c.transfer} disagrees with its first chunk`);
    }
    if (!t.parts[c.index]) {
      t.parts[c.index] = Uint8Array.from(c.data);
      t.left--;
    }
    if (t.left > 0) return undefined;
    this.open.delete(c.transfer);
    const bytes = Buffer.concat(t.parts as Uint8Array[]);
    if (bytes.byteLength !== f.totalBytes || sha256(bytes) !== f.sha256)
      throw new WireError('bad_state', `state transfer ${c.transfer} failed its length or SHA-256 check`);
    return { transfer: c.transfer, step: env.step, bytes, checksum: f.checksum, from: env.worker };
  }

  forget(transfer: string): void {
    this.open.delete(transfer);
  }
}
