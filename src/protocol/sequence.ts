/**
 * Idempotence under duplicated, delayed or replayed delivery (proto/scoreflow.proto, header
 * fields origin and seq). A Sender stamps each message it sends with (origin, seq); a
 * ReplayGuard keeps, per sender, the highest stamp it accepted and refuses anything not
 * above it. NATS delivers one connection's messages to a subscriber in publish order, so
 * a refused message is a copy: a capture played back, or a client's buffer re-sent after
 * a reconnect. Gaps (messages lost or sent elsewhere) are fine.
 */
import { WireError } from './errors.js';

export class Sender {
  private seq = 0;

  /** `origin` must grow from one life of a sender (same id) to the next. */
  constructor(readonly origin: number) {
    if (!(Number.isSafeInteger(origin) && origin > 0)) throw new Error(`bad message origin ${origin}`);
  }

  /**
   * An origin from the clock, in microseconds: a later life of the same sender id starts
   * later (a restart takes far longer than the clock skew between two hosts under NTP).
   */
  static now(): Sender {
    return new Sender(Math.floor((performance.timeOrigin + performance.now()) * 1000));
  }

  stamp<H extends object>(h: H): H & { origin: number; seq: number } {
    return { ...h, origin: this.origin, seq: ++this.seq };
  }
}

/** Per sender id, the newest (origin, seq) accepted. At most `limit` senders are remembered (oldest forgotten). */
export class ReplayGuard {
  private readonly last = new Map<string, { origin: number; seq: number }>();

  constructor(private readonly limit = 10_000) {}

  /** Accepts the stamp or throws WireError('duplicate'). */
  check(sender: string, origin: number, seq: number): void {
    const l = this.last.get(sender);
    if (!(origin > 0 && seq > 0)) throw new WireError('duplicate', `message from ${JSON.stringify(sender)} without origin/seq`);
    if (l && (origin < l.origin || (origin === l.origin && seq <= l.seq)))
      throw new WireError('duplicate', `message ${origin}/${seq} from ${JSON.stringify(sender)}, already past ${l.origin}/${l.seq}`);
    this.last.delete(sender);
    this.last.set(sender, { origin, seq });
    if (this.last.size > this.limit) this.last.delete(this.last.keys().next().value!);
  }
}
