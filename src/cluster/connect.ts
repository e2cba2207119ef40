/**
 * NATS client connections for coordinator and workers: the same auth and TLS options on
 * every client, reconnecting forever (a broker restart is a pause, not an end).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, nkeyAuthenticator, type ConnectionOptions, type NatsConnection } from 'nats';

export interface NatsAuth {
  token?: string;
  user?: string;
  pass?: string;
  /** An nkey user seed (SU...). */
  nkeySeed?: string;
  tls?: { ca?: string; cert?: string; key?: string };
}

export interface ClientOptions extends NatsAuth {
  url: string;
  name?: string;
  /** Give up the first connect after this long (default 10 s); reconnects never give up. */
  connectTimeoutMs?: number;
}

export function connectionOptions(o: ClientOptions): ConnectionOptions {
  const opts: ConnectionOptions = {
    servers: o.url,
    name: o.name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    reconnectJitter: 50,
    pingInterval: 5_000,
    timeout: o.connectTimeoutMs ?? 10_000,
    noEcho: true,
  };
  if (o.token) opts.token = o.token;
  if (o.user) {
    opts.user = o.user;
    opts.pass = o.pass ?? '';
  }
  if (o.nkeySeed) opts.authenticator = nkeyAuthenticator(new TextEncoder().encode(o.nkeySeed.trim()));
  if (o.tls || o.url.startsWith('tls://')) opts.tls = { caFile: o.tls?.ca, certFile: o.tls?.cert, keyFile: o.tls?.key };
  return opts;
}

/** Connects, retrying the first connection until connectTimeoutMs; errors say what to check. */
export async function connectNats(o: ClientOptions): Promise<NatsConnection> {
  const deadline = Date.now() + (o.connectTimeoutMs ?? 10_000);
  for (;;) {
    try {
      return await connect({ ...connectionOptions(o), waitOnFirstConnect: false });
    } catch (e) {
      const msg = (e as Error).message;
      if (/auth|permission/i.test(msg))
        throw new Error(`NATS at ${o.url} refused our credentials (${msg}): check --nats-token/--nats-user/--nats-nkey`);
      // TLS problems do not go away by retrying: say so at once.
      const tls = tlsProblem(e as Error & { code?: string }, o);
      if (tls) throw new Error(`cannot connect to NATS at ${o.url}: ${tls}`);
      if (Date.now() > deadline) throw new Error(`cannot connect to NATS at ${o.url}: ${msg}`);
      await sleep(200);
    }
  }
}

/** A TLS misconfiguration (as opposed to a server not up yet), explained; undefined otherwise. */
function tlsProblem(e: Error & { code?: string }, o: ClientOptions): string | undefined {
  const code = e.code ?? '';
  if (code === 'SERVER_OPT_NA' && e.message === 'tls')
    return 'the server does not offer TLS, but TLS options (--tls-ca/--tls-cert or a tls:// URL) were given';
  if (/CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ERR_TLS|ERR_SSL/.test(code)) return `TLS: ${e.message} (${code}): check --tls-ca`;
  if (code === 'ENOENT' && o.tls) return `TLS: ${e.message}: check --tls-ca/--tls-cert/--tls-key`;
  return undefined;
}
