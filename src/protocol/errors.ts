/**
 * Why a message was rejected: the closed set that receivers count by (metrics label
 * `reason`, initialised at 0 for each so that `rate()` works from the first scrape).
 * Decoding never throws anything but a WireError past the protocol's decoders.
 */
export const REJECT_REASONS = [
  'undecodable',
  'version',
  'no_body',
  'other_run',
  'unknown_worker',
  'stale_epoch',
  'unexpected',
  'bad_chunk',
  'non_finite',
  'bad_state',
  'wrong_session',
  'duplicate',
] as const;
export type RejectReason = (typeof REJECT_REASONS)[number];

export class WireError extends Error {
  constructor(
    readonly reason: RejectReason,
    detail: string,
  ) {
    super(`${reason}: ${detail}`);
  }
}

/** A message of another protocol version: what of its header could be read, so that a Join can be refused in words. */
export class VersionError extends WireError {
  constructor(
    readonly version: number,
    readonly kind: string,
    readonly run: string,
    readonly worker: string,
    expected: number,
  ) {
    super('version', `protocol version ${version}, expected ${expected}`);
  }
}
