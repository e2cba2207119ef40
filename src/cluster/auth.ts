/**
 * NATS credentials and TLS from flags or the environment, for every client (coordinator,
 * workers) and for the embedded nats-server. Secrets travel to spawned workers in their
 * environment (SCOREFLOW_NATS_*), never on a command line where `ps` would show them.
 */
import { readFileSync } from 'node:fs';
import { nkeys } from 'nats';
import { Command } from 'commander';
import type { NatsAuth } from './connect.js';
import type { ServerAuth, ServerTls } from './nats-server.js';

export interface AuthFlags {
  natsToken?: string;
  natsUser?: string;
  natsPass?: string;
  /** File holding an nkey user seed (SU...). */
  natsNkey?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
}

const ENV = {
  natsToken: 'SCOREFLOW_NATS_TOKEN',
  natsUser: 'SCOREFLOW_NATS_USER',
  natsPass: 'SCOREFLOW_NATS_PASS',
  natsNkey: 'SCOREFLOW_NATS_NKEY',
  tlsCa: 'SCOREFLOW_NATS_TLS_CA',
  tlsCert: 'SCOREFLOW_NATS_TLS_CERT',
  tlsKey: 'SCOREFLOW_NATS_TLS_KEY',
} as const satisfies Record<keyof AuthFlags, string>;

export function addAuthOptions(cmd: Command): Command {
  return cmd
    .option('--nats-token <token>', `NATS token (or $${ENV.natsToken})`)
    .option('--nats-user <user>', `NATS user (or $${ENV.natsUser}); password in $${ENV.natsPass} or --nats-pass`)
    .option('--nats-pass <pass>', 'NATS password')
    .option('--nats-nkey <file>', `file with an nkey user seed (or $${ENV.natsNkey})`)
    .option('--tls-ca <file>', 'CA certificate for TLS to NATS')
    .option('--tls-cert <file>', 'client (and embedded server) certificate')
    .option('--tls-key <file>', 'key of --tls-cert');
}

/** Flags win over the environment. */
export function authFlags(f: AuthFlags): AuthFlags {
  const out: AuthFlags = {};
  for (const k of Object.keys(ENV) as (keyof AuthFlags)[]) {
    const v = f[k] ?? process.env[ENV[k]];
    if (v) out[k] = v;
  }
  if (out.natsPass && !out.natsUser) throw new Error('--nats-pass needs --nats-user');
  if ((out.tlsCert && !out.tlsKey) || (!out.tlsCert && out.tlsKey)) throw new Error('--tls-cert and --tls-key go together');
  return out;
}

/** The environment that hands these credentials to a spawned worker. */
export function authEnv(f: AuthFlags): Record<string, string> {
  const env: Record<string, string> = {};
  for (const k of Object.keys(ENV) as (keyof AuthFlags)[]) if (f[k]) env[ENV[k]] = f[k]!;
  return env;
}

function readSeed(file: string): string {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new Error(`cannot read the nkey seed file ${file}: ${(e as Error).message}`);
  }
}

export function clientAuth(f: AuthFlags): NatsAuth {
  const a: NatsAuth = { token: f.natsToken, user: f.natsUser, pass: f.natsPass };
  if (f.natsNkey) a.nkeySeed = readSeed(f.natsNkey);
  if (f.tlsCa || f.tlsCert) a.tls = { ca: f.tlsCa, cert: f.tlsCert, key: f.tlsKey };
  return a;
}

/** What the embedded nats-server must require so that these credentials (and only they) get in. */
export function serverAuth(f: AuthFlags): { auth?: ServerAuth; tls?: ServerTls } {
  let auth: ServerAuth | undefined;
  if (f.natsToken) auth = { token: f.natsToken };
  else if (f.natsUser) auth = { user: f.natsUser, pass: f.natsPass ?? '' };
  else if (f.natsNkey) {
    const seed = readSeed(f.natsNkey);
    let pub: string;
    try {
      pub = nkeys.fromSeed(new TextEncoder().encode(seed)).getPublicKey();
    } catch {
      throw new Error(`${f.natsNkey} does not hold an nkey seed (expected a line starting with SU)`);
    }
    auth = { nkeys: [pub] };
  }
  // A CA alone makes a TLS client, and our clients would then refuse a plaintext embedded server.
  if (f.tlsCa && !f.tlsCert)
    throw new Error('--tls-ca alone: the embedded nats-server needs --tls-cert and --tls-key too (or pass --nats URL of a TLS server)');
  const tls = f.tlsCert && f.tlsKey ? { cert: f.tlsCert, key: f.tlsKey, ca: f.tlsCa, verify: false } : undefined;
  return { auth, tls };
}

/**
 * Credentials written into a URL (`nats://user:pass@host`, `nats://token@host`) moved into the
 * SCOREFLOW_NATS_* environment, so that a spawned worker's command line carries none.
 */
export function splitUrlCredentials(url: string): { url: string; env: Record<string, string> } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return { url, env: {} };
  }
  if (!u.username && !u.password) return { url, env: {} };
  const user = decodeURIComponent(u.username);
  const env: Record<string, string> = u.password
    ? { SCOREFLOW_NATS_USER: user, SCOREFLOW_NATS_PASS: decodeURIComponent(u.password) }
    : { SCOREFLOW_NATS_TOKEN: user };
  u.username = '';
  u.password = '';
  return { url: u.toString(), env };
}
