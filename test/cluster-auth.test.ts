/**
 * NATS authentication and TLS ([cluster] "Bad input and security"): for a token,
 * user/password, an nkey and TLS (a CA and a server certificate made here with openssl),
 *  - `coordinator start --gpus 1` starts its embedded nats-server with that auth, the
 *    spawned worker connects with it, and the run finishes with a checkpoint;
 *  - a nats-server configured by `serverAuth` really enforces it: a client without the
 *    credentials (or without TLS, or without the CA) is refused, one with them gets in;
 *  - the secrets never appear on the worker's (or nats-server's) command line: they
 *    travel in its SCOREFLOW_NATS_* environment.
 * Plus: TLS misconfigurations fail at once with a pointer to the flag, and bad auth input
 * is one clear line.
 * A tiny ScoreNet, 2 steps, wasm.
 */
import assert from 'node:assert/strict';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it, test } from 'node:test';
import { createConnection } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, nkeyAuthenticator, nkeys, type ConnectionOptions, type NatsConnection } from 'nats';
import { authEnv, clientAuth, serverAuth, splitUrlCredentials, type AuthFlags } from '../src/cluster/auth.js';
import { connectNats } from '../src/cluster/connect.js';
import { NatsServer } from '../src/cluster/nats-server.js';
import { errorLines, runBin, spawnBin, tempDir, TINY_NET } from './helpers/cli.js';

const dir = tempDir('scoreflow-auth-');
const TINY = ['--gpus', '1', '--steps', '2', ...TINY_NET, '--limit', '64', '--batch-size', '8', '--backend', 'wasm', '--threads', '1'];

const TOKEN = 'tok-7f3a9c1e-secret';
const USER = 'trainer';
const PASS = 'pw-4be2d901-secret';
const userKey = nkeys.createUser();
const SEED = new TextDecoder().decode(userKey.getSeed());
const seedFile = join(dir, 'user.nk');
const tls = { ca: join(dir, 'ca.pem'), cert: join(dir, 'server.pem'), key: join(dir, 'server.key') };

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

before(() => {
  writeFileSync(seedFile, SEED + '\n', { mode: 0o600 });
  // A CA, and a server certificate for 127.0.0.1/localhost signed by it (EC keys: quick to make).
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'ca.key',
    '-out',
    'ca.pem',
    '-days',
    '2',
    '-subj',
    '/CN=scoreflow test CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  );
  openssl('req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost');
  writeFileSync(
    join(dir, 'server.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n',
  );
  openssl(
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca.pem',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'server.pem',
    '-days',
    '2',
    '-extfile',
    'server.ext',
  );
});
after(() => rmSync(dir, { recursive: true, force: true }));

interface Case {
  name: string;
  /** The credentials as the coordinator resolves them. */
  flags: AuthFlags;
  /** How the test hands them to `coordinator start`: flags, and environment. */
  args: string[];
  env: Record<string, string>;
  /** Strings that must never appear on a spawned command line. */
  secrets: string[];
  /** Client options that must be refused, with the error code (or message pattern) expected. */
  refused: { what: string; opts: Partial<ConnectionOptions>; expect: string | RegExp }[];
  /** Client options that must get in. */
  accepted: Partial<ConnectionOptions>;
}

const otherKey = nkeys.createUser();
const CASES: Case[] = [
  {
    name: 'token',
    flags: { natsToken: TOKEN },
    args: ['--nats-token', TOKEN],
    env: {},
    secrets: [TOKEN],
    refused: [
      { what: 'no token', opts: {}, expect: 'AUTHORIZATION_VIOLATION' },
      { what: 'a wrong token', opts: { token: 'nope' }, expect: 'AUTHORIZATION_VIOLATION' },
    ],
    accepted: { token: TOKEN },
  },
  {
    name: 'user/password',
    flags: { natsUser: USER, natsPass: PASS },
    // The user as a flag, the password from the environment (as --help suggests).
    args: ['--nats-user', USER],
    env: { SCOREFLOW_NATS_PASS: PASS },
    secrets: [PASS],
    refused: [
      { what: 'no credentials', opts: {}, expect: 'AUTHORIZATION_VIOLATION' },
      { what: 'a wrong password', opts: { user: USER, pass: 'nope' }, expect: 'AUTHORIZATION_VIOLATION' },
    ],
    accepted: { user: USER, pass: PASS },
  },
  {
    name: 'nkey',
    flags: { natsNkey: seedFile },
    args: ['--nats-nkey', seedFile],
    env: {},
    secrets: [SEED],
    refused: [
      { what: 'no credentials', opts: {}, expect: 'AUTHORIZATION_VIOLATION' },
      { what: 'another nkey', opts: { authenticator: nkeyAuthenticator(otherKey.getSeed()) }, expect: 'AUTHORIZATION_VIOLATION' },
    ],
    accepted: { authenticator: nkeyAuthenticator(userKey.getSeed()) },
  },
  {
    name: 'TLS',
    flags: { tlsCa: tls.ca, tlsCert: tls.cert, tlsKey: tls.key },
    args: ['--tls-ca', tls.ca, '--tls-cert', tls.cert, '--tls-key', tls.key],
    env: {},
    secrets: [],
    // (A plaintext client: see plaintextRefused; nats.js upgrades to TLS whenever the server offers it.)
    refused: [
      // TLS, but not trusting our CA: the self-signed chain is rejected.
      { what: 'TLS without the CA', opts: { tls: {} }, expect: /self[- ]signed|certificate/i },
    ],
    accepted: { tls: { caFile: tls.ca } },
  },
];

/** connect() rejected, with its error; plain (no reconnects), so it fails at once. */
async function refusal(url: string, opts: Partial<ConnectionOptions>): Promise<Error & { code?: string }> {
  let nc: NatsConnection | undefined;
  try {
    nc = await connect({ ...opts, servers: url, reconnect: false, timeout: 5000 });
    await nc.flush();
  } catch (e) {
    return e as Error & { code?: string };
  } finally {
    await nc?.close().catch(() => {});
  }
  assert.fail(`a client with ${JSON.stringify(opts)} got into ${url}`);
}

/**
 * A client that speaks plain NATS protocol over TCP: it is told TLS is required, and its
 * CONNECT/PING never gets a PONG (the server closes the connection instead).
 */
async function plaintextRefused(port: number): Promise<void> {
  const got = await new Promise<string>((resolve, reject) => {
    let data = '';
    const s = createConnection({ host: '127.0.0.1', port });
    const t = setTimeout(() => (s.destroy(), reject(new Error(`the server kept a plaintext client: ${data}`))), 5000);
    s.on('data', (b) => {
      data += b.toString('latin1');
      if (data.startsWith('INFO ') && data.includes('\r\n') && !data.includes('CONNECT-SENT')) {
        s.write('CONNECT {"verbose":false,"pedantic":false,"tls_required":false}\r\nPING\r\n');
        data += '\nCONNECT-SENT\n';
      }
      if (data.includes('PONG')) {
        clearTimeout(t);
        s.destroy();
        resolve(data);
      }
    });
    s.on('error', () => {});
    s.on('close', () => {
      clearTimeout(t);
      resolve(data);
    });
  });
  const info = JSON.parse(got.slice(5, got.indexOf('\r\n'))) as { tls_required?: boolean };
  assert.equal(info.tls_required, true, 'the server does not announce tls_required');
  assert.ok(!got.includes('PONG'), `a plaintext client got a PONG: ${got}`);
}

// ---- processes ----------------------------------------------------------------------

/** Children of `pid`, from /proc (ppid is the 4th field of /proc/<pid>/stat, after "(comm)"). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(e));
    } catch {
      /* gone */
    }
  }
  return out;
}

function procFile(pid: number, name: 'cmdline' | 'environ'): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}/${name}`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

interface Seen {
  worker?: { cmdline: string[]; environ: string[] };
  server?: { cmdline: string[] };
}

/**
 * `coordinator start` with these credentials, watching /proc while it runs for its worker
 * and its nats-server; everything it started is killed if it does not finish in time.
 */
async function coordinatorRun(c: Case, out: string): Promise<{ code: number | null; output: string; seen: Seen }> {
  const child: ChildProcess = spawnBin('coordinator', ['start', ...TINY, ...c.args, '--out', out], c.env);
  let output = '';
  child.stdout!.on('data', (b) => (output += b));
  child.stderr!.on('data', (b) => (output += b));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  let code: number | null | undefined;
  void exited.then((x) => (code = x));
  const seen: Seen = {};
  const started = new Set<number>();
  const deadline = Date.now() + 60_000;
  try {
    while (code === undefined) {
      if (Date.now() > deadline) throw new Error(`coordinator start did not finish in time:\n${output.slice(-2000)}`);
      if (!seen.worker || !seen.server) {
        for (const pid of childrenOf(child.pid!)) {
          started.add(pid);
          const cmdline = procFile(pid, 'cmdline');
          // Spawned through `setpriv --pdeathsig ...`, which then execs the real command under the
          // same pid: until that exec the cmdline is setpriv's. Look again on the next round.
          if (!cmdline || cmdline[0]?.endsWith('setpriv')) continue;
          if (!seen.worker && cmdline.some((a) => a.endsWith('worker.js'))) {
            const environ = procFile(pid, 'environ');
            if (environ) seen.worker = { cmdline, environ };
          } else if (!seen.server && cmdline.some((a) => a.endsWith('nats-server'))) seen.server = { cmdline };
        }
      }
      await sleep(20);
    }
  } finally {
    if (code === undefined) {
      child.kill('SIGKILL');
      await exited;
    }
    for (const pid of started) if (alive(pid)) process.kill(pid, 'SIGKILL');
  }
  return { code, output, seen };
}

// ---- the tests ----------------------------------------------------------------------

for (const c of CASES) {
  describe(`NATS ${c.name}`, () => {
    it('the nats-server that serverAuth configures refuses clients without it and admits clients with it', async () => {
      const server = await NatsServer.start({ ...serverAuth(c.flags), jetstream: false });
      try {
        if (c.flags.tlsCert) {
          assert.match(server.url, /^tls:\/\//);
          await plaintextRefused(server.port);
        }
        for (const r of c.refused) {
          const e = await refusal(server.url, r.opts);
          if (typeof r.expect === 'string') assert.equal(e.code, r.expect, `${r.what}: ${e.message}`);
          else assert.match(`${e.code ?? ''} ${e.message}`, r.expect, r.what);
        }
        const nc = await connect({ ...c.accepted, servers: server.url, reconnect: false, timeout: 5000 });
        try {
          const sub = nc.subscribe('auth.echo', { max: 1, callback: (_e, m) => m.respond(m.data) });
          const reply = await nc.request('auth.echo', new TextEncoder().encode('hi'), { timeout: 5000 });
          assert.equal(new TextDecoder().decode(reply.data), 'hi');
          sub.unsubscribe();
        } finally {
          await nc.close();
        }
        // The production client (what coordinator and workers use) gets in with clientAuth.
        const prod = await connectNats({ ...clientAuth(c.flags), url: server.url, connectTimeoutMs: 5000 });
        await prod.flush();
        await prod.close();
        // ... and says which flags to check when refused.
        if (!c.flags.tlsCert) {
          await assert.rejects(connectNats({ url: server.url, connectTimeoutMs: 5000 }), /refused our credentials.*--nats-token/);
        } else {
          // A TLS problem is reported at once, not retried until the connect timeout.
          const t0 = Date.now();
          await assert.rejects(connectNats({ url: server.url, tls: {}, connectTimeoutMs: 20_000 }), /TLS: .*check --tls-ca/);
          const plain = await NatsServer.start({ jetstream: false });
          try {
            await assert.rejects(connectNats({ ...clientAuth(c.flags), url: plain.url, connectTimeoutMs: 20_000 }), /does not offer TLS/);
          } finally {
            await plain.close();
          }
          assert.ok(Date.now() - t0 < 10_000, 'TLS errors were retried');
        }
      } finally {
        await server.close();
      }
    });

    it('coordinator start --gpus 1 runs to the end on its own authenticated nats-server; secrets stay off command lines', async () => {
      const out = join(dir, `run-${c.name.replace(/\W/g, '')}`);
      const r = await coordinatorRun(c, out);
      assert.equal(r.code, 0, `coordinator start failed:\n${r.output.slice(-3000)}`);
      assert.ok(existsSync(join(out, 'checkpoint.safetensors')), 'no checkpoint written');
      assert.match(r.output, new RegExp(`started nats-server on ${c.flags.tlsCert ? 'tls' : 'nats'}://127\\.0\\.0\\.1:\\d+`));
      assert.match(r.output, /worker \S+ joined/);
      assert.match(r.output, /run \S+ done at step 2/);
      assert.deepEqual(
        errorLines(r.output).filter((l) => /refused|authori[sz]ation|certificate|handshake|error/i.test(l)),
        [],
      );

      // The worker got the credentials through its environment, not its arguments.
      assert.ok(r.seen.worker, 'never saw the spawned worker process');
      const { cmdline, environ } = r.seen.worker;
      for (const s of c.secrets) {
        assert.ok(!cmdline.some((a) => a.includes(s)), `a secret on the worker's command line: ${cmdline.join(' ')}`);
        assert.ok(!r.seen.server?.cmdline.some((a) => a.includes(s)), `a secret on nats-server's command line`);
      }
      assert.deepEqual(
        cmdline.filter((a) => /^--(nats-(token|user|pass|nkey)|tls-)/.test(a)),
        [],
        `credential flags on the worker's command line: ${cmdline.join(' ')}`,
      );
      const expected = Object.entries(authEnv(c.flags)).map(([k, v]) => `${k}=${v}`);
      for (const kv of expected) assert.ok(environ.includes(kv), `${kv.split('=')[0]} missing from the worker's environment`);
      assert.ok(r.seen.server, 'never saw the embedded nats-server');
      assert.deepEqual(
        r.seen.server.cmdline.slice(1, 2),
        ['-c'],
        `nats-server is configured through its config file: ${r.seen.server.cmdline.join(' ')}`,
      );
    });
  });
}

describe('no credentials given', () => {
  it('the embedded nats-server gets a random token of its own: other local clients are refused, the join command names it', async () => {
    const child = spawnBin('coordinator', ['start', ...TINY, '--no-spawn', '--out', join(dir, 'default-token')]);
    let output = '';
    child.stderr!.on('data', (b) => (output += b));
    try {
      const deadline = Date.now() + 30_000;
      let m: RegExpExecArray | null = null;
      while (!(m = /start workers with: SCOREFLOW_NATS_TOKEN=(\S+) worker start --nats (\S+) --run \S+/.exec(output))) {
        assert.ok(Date.now() < deadline && child.exitCode === null, `no join command with a token:\n${output}`);
        await sleep(50);
      }
      const [, token, url] = m;
      assert.ok(token.length >= 32, `token ${token} is short`);
      await assert.rejects(connectNats({ url, connectTimeoutMs: 5000 }), /refused our credentials/);
      await assert.rejects(connectNats({ url, token: 'guess', connectTimeoutMs: 5000 }), /refused our credentials/);
      const nc = await connectNats({ url, token, connectTimeoutMs: 5000 });
      await nc.close();
    } finally {
      // SIGTERM: the coordinator stops its run and its nats-server
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    }
  });
});

describe('bad auth input', () => {
  it('an nkey file that holds no seed, --tls-cert without --tls-key, --tls-ca without a server certificate: one clear line each', () => {
    const bad = join(dir, 'bad.nk');
    writeFileSync(bad, 'not a seed\n');
    const a = runBin('coordinator', ['start', ...TINY, '--nats-nkey', bad, '--out', join(dir, 'bad1')], { timeoutMs: 30_000 });
    assert.notEqual(a.code, 0);
    assert.deepEqual(errorLines(a.stderr), [`coordinator: ${bad} does not hold an nkey seed (expected a line starting with SU)`]);
    const b = runBin('coordinator', ['start', ...TINY, '--tls-cert', tls.cert, '--out', join(dir, 'bad2')], { timeoutMs: 30_000 });
    assert.notEqual(b.code, 0);
    assert.deepEqual(errorLines(b.stderr), ['coordinator: --tls-cert and --tls-key go together']);
    // A CA alone is a TLS client: the embedded server (without a certificate) could not serve it.
    const d = runBin('coordinator', ['start', ...TINY, '--tls-ca', tls.ca, '--out', join(dir, 'bad3')], { timeoutMs: 30_000 });
    assert.notEqual(d.code, 0);
    assert.deepEqual(errorLines(d.stderr), [
      'coordinator: --tls-ca alone: the embedded nats-server needs --tls-cert and --tls-key too (or pass --nats URL of a TLS server)',
    ]);
  });
});

test('credentials written into a --nats URL reach spawned workers through the environment, not argv', () => {
  assert.deepEqual(splitUrlCredentials('nats://alice:s%40cret@10.0.0.1:4222'), {
    url: 'nats://10.0.0.1:4222',
    env: { SCOREFLOW_NATS_USER: 'alice', SCOREFLOW_NATS_PASS: 's@cret' },
  });
  assert.deepEqual(splitUrlCredentials('nats://t0ken@nats:4222'), { url: 'nats://nats:4222', env: { SCOREFLOW_NATS_TOKEN: 't0ken' } });
  assert.deepEqual(splitUrlCredentials('nats://127.0.0.1:4222'), { url: 'nats://127.0.0.1:4222', env: {} });
});
