/**
 * A `nats-server` child process on a loopback port: the embedded default of
 * `coordinator start` (when no --nats URL is given) and the broker of every cluster test.
 *
 * The server is configured through a generated config file (mode 0600, in a private
 * temporary folder) so that credentials never appear on a command line, and so that
 * token, user/password, nkey and TLS settings all take the same path.
 *
 * The server dies with the process that started it, however that one dies (the kernel's
 * parent-death signal, see parent-death.ts). Its private folder, `scoreflow-nats-*` in the
 * temp dir, holds `owner.json` (the pids of the starter and the server): a folder whose two
 * processes are both gone was left by a starter that was killed, and the next start removes it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { processAlive } from '../core/io/atomic.js';
import { dieWithParent } from './parent-death.js';

const DIR_PREFIX = 'scoreflow-nats-';

/**
 * Removes the temp folders of embedded servers whose starter and server are both dead (a
 * starter SIGKILLed never ran its clean-up). Folders without owner.json are left alone: they
 * may belong to a server just being set up, or to an older version that did not write one.
 * Returns the removed paths.
 */
export function removeStaleServerDirs(root = tmpdir()): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = readdirSync(root).filter((n) => n.startsWith(DIR_PREFIX));
  } catch {
    return removed;
  }
  for (const name of names) {
    const dir = join(root, name);
    let owner: { owner?: number; server?: number };
    try {
      owner = JSON.parse(readFileSync(join(dir, 'owner.json'), 'utf8')) as typeof owner;
    } catch {
      continue;
    }
    if (processAlive(owner.owner ?? 0) || processAlive(owner.server ?? 0)) continue;
    try {
      rmSync(dir, { recursive: true, force: true });
      removed.push(dir);
    } catch {
      /* another user's, or going away meanwhile: not ours to insist on */
    }
  }
  return removed;
}

export type ServerAuth = { token: string } | { user: string; pass: string } | { nkeys: string[] /* public user nkeys (U...) */ };

export interface ServerTls {
  cert: string;
  key: string;
  /** CA file; with `verify` the server demands client certificates signed by it. */
  ca?: string;
  verify?: boolean;
}

export interface NatsServerOptions {
  /** Path to the binary; default: $NATS_SERVER_BIN, /usr/sbin/nats-server, then $PATH. */
  binary?: string;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  jetstream?: boolean;
  /** JetStream store folder; default: a fresh temporary folder, removed on stop(). */
  storeDir?: string;
  maxPayload?: number;
  auth?: ServerAuth;
  tls?: ServerTls;
  readyTimeoutMs?: number;
  /** Receives the server's log lines (default: dropped). */
  log?: (line: string) => void;
}

const DEFAULTS = { host: '127.0.0.1', port: 0, jetstream: true, readyTimeoutMs: 10_000 };

export class NatsServerNotFound extends Error {
  constructor() {
    super('nats-server not found: apt-get install nats-server, or pass --nats URL');
  }
}

/** Finds the nats-server binary or throws NatsServerNotFound. */
export function findNatsServer(explicit?: string): string {
  // An explicit path (argument or $NATS_SERVER_BIN) is the only one tried.
  const only = explicit ?? process.env.NATS_SERVER_BIN;
  const candidates = only ? [only] : ['/usr/sbin/nats-server', '/usr/bin/nats-server'];
  if (!only) for (const dir of (process.env.PATH ?? '').split(delimiter)) if (dir) candidates.push(join(dir, 'nats-server'));
  for (const c of candidates) {
    if (!c) continue;
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      /* next */
    }
  }
  throw new NatsServerNotFound();
}

/** A free TCP port on `host` (bound and released; the usual small race is acceptable for tests). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function q(s: string): string {
  return JSON.stringify(s);
}

function configText(
  o: Required<Pick<NatsServerOptions, 'host' | 'port' | 'jetstream'>> & NatsServerOptions & { storeDir: string },
): string {
  const lines = [`listen: ${q(`${o.host}:${o.port}`)}`];
  if (o.jetstream) lines.push(`jetstream { store_dir: ${q(o.storeDir)} }`);
  if (o.maxPayload) lines.push(`max_payload: ${o.maxPayload}`);
  const a = o.auth;
  if (a && 'token' in a) lines.push(`authorization { token: ${q(a.token)} }`);
  if (a && 'user' in a) lines.push(`authorization { user: ${q(a.user)}, password: ${q(a.pass)} }`);
  if (a && 'nkeys' in a) lines.push(`authorization { users: [ ${a.nkeys.map((k) => `{ nkey: ${q(k)} }`).join(', ')} ] }`);
  if (o.tls) {
    const t = [`cert_file: ${q(o.tls.cert)}`, `key_file: ${q(o.tls.key)}`];
    if (o.tls.ca) t.push(`ca_file: ${q(o.tls.ca)}`);
    if (o.tls.verify) t.push('verify: true');
    lines.push(`tls { ${t.join(', ')} }`);
  }
  return lines.join('\n') + '\n';
}

/** Resolves once something accepts TCP connections on host:port, or rejects at the deadline. */
async function waitForPort(host: string, port: number, deadline: number, exited: () => string | undefined): Promise<void> {
  for (;;) {
    const why = exited();
    if (why) throw new Error(why);
    const ok = await new Promise<boolean>((resolve) => {
      const c = createConnection({ host, port });
      c.once('connect', () => (c.destroy(), resolve(true)));
      c.once('error', () => (c.destroy(), resolve(false)));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nats-server did not accept connections on ${host}:${port} in time`);
    await sleep(50);
  }
}

export class NatsServer {
  private child?: ChildProcess;
  private readonly dir: string;
  private readonly ownStore: boolean;
  private tail: string[] = [];

  private constructor(
    private readonly binary: string,
    private readonly opts: NatsServerOptions & typeof DEFAULTS & { storeDir: string },
    dir: string,
    ownStore: boolean,
  ) {
    this.dir = dir;
    this.ownStore = ownStore;
  }

  static async start(options: NatsServerOptions = {}): Promise<NatsServer> {
    const binary = findNatsServer(options.binary);
    removeStaleServerDirs();
    const dir = mkdtempSync(join(tmpdir(), DIR_PREFIX));
    writeFileSync(join(dir, 'owner.json'), JSON.stringify({ owner: process.pid }) + '\n');
    const merged = { ...DEFAULTS, ...options, storeDir: options.storeDir ?? join(dir, 'js') };
    if (!merged.port) merged.port = await freePort(merged.host);
    const s = new NatsServer(binary, merged, dir, !options.storeDir);
    await s.launch();
    return s;
  }

  get port(): number {
    return this.opts.port;
  }

  /** nats://host:port, or tls://host:port when TLS is configured. */
  get url(): string {
    return `${this.opts.tls ? 'tls' : 'nats'}://${this.opts.host}:${this.opts.port}`;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }

  private async launch(): Promise<void> {
    const conf = join(this.dir, 'nats.conf');
    writeFileSync(conf, configText(this.opts), { mode: 0o600 });
    const [cmd, args] = dieWithParent(this.binary, ['-c', conf]);
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    writeFileSync(join(this.dir, 'owner.json'), JSON.stringify({ owner: process.pid, server: child.pid ?? 0 }) + '\n');
    this.tail = [];
    const onData = (b: Buffer): void => {
      for (const line of b.toString().split('\n')) {
        if (!line) continue;
        this.tail.push(line);
        if (this.tail.length > 20) this.tail.shift();
        this.opts.log?.(line);
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    let spawnError: Error | undefined;
    child.once('error', (e) => (spawnError = e));
    const exited = (): string | undefined => {
      if (spawnError) return `nats-server failed to start: ${spawnError.message}`;
      if (child.exitCode !== null || child.signalCode !== null)
        return `nats-server exited (${child.exitCode ?? child.signalCode}): ${this.tail.slice(-3).join(' | ')}`;
      return undefined;
    };
    await waitForPort(this.opts.host, this.opts.port, Date.now() + this.opts.readyTimeoutMs, exited);
  }

  /** Stops the server (SIGTERM, then SIGKILL after 3 s); resolves once it has exited. */
  async stop(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const done = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 3000);
    await done;
    clearTimeout(t);
  }

  /** Stops and starts again on the same port and store: clients see a broker restart. */
  async restart(downMs = 0): Promise<void> {
    await this.stop();
    if (downMs) await sleep(downMs);
    await this.launch();
  }

  /** Stops the server and removes its temporary folder (and its store, if we created it). */
  async close(): Promise<void> {
    await this.stop();
    if (this.ownStore) rmSync(this.dir, { recursive: true, force: true });
    else rmSync(join(this.dir, 'nats.conf'), { force: true });
  }
}

/**
 * The broker of a coordinator command: the given `--nats` URL, or (the embedded default) a
 * nats-server child on a free loopback port with the same credentials the clients will use.
 */
export async function brokerFor(
  given: string | undefined,
  auth: Pick<NatsServerOptions, 'auth' | 'tls'>,
  log: (line: string) => void,
): Promise<{ url: string; server?: NatsServer }> {
  if (given) return { url: given };
  const server = await NatsServer.start({ ...auth, log: process.env.SCOREFLOW_NATS_LOG ? log : undefined });
  log(`coordinator: started nats-server on ${server.url}`);
  return { url: server.url, server };
}
