// The metrics endpoint: /metrics (Prometheus text format), /healthz (the process is alive and its
// event loop answers) and /readyz (the owner says it is ready: a worker has joined a run, the
// coordinator has its quorum). Plain node:http; nothing else listens on this port.
import { createServer, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer } from 'node:net';
import type { Registry } from 'prom-client';

/** The coordinator's default `--metrics-port`; spawned workers take the next free ports above it. */
export const DEFAULT_METRICS_PORT = 9640;

export interface ServeOptions {
  /** Interface to bind; all interfaces when left out (what a pod needs). Tests use 127.0.0.1. */
  host?: string;
  /**
   * How many consecutive ports to try from `port` when it is taken (EADDRINUSE), so that
   * several workers on one machine can share a base port. 1 = that port or fail. Ignored for port 0.
   */
  tries?: number;
}

export interface MetricsServer {
  /** The port actually bound (the ephemeral one for port 0): log it. */
  port: number;
  close(): Promise<void>;
}

export interface Endpoint {
  registry: Registry;
  isReady(): boolean;
}

function listen(server: Server | NetServer, port: number, host: string | undefined): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => {
      server.off('listening', onListening);
      reject(err);
    };
    const onListening = () => {
      server.off('error', onError);
      resolve((server.address() as AddressInfo).port);
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(port, host);
  });
}

function isAddrInUse(err: unknown): boolean {
  return (err as NodeJS.ErrnoException)?.code === 'EADDRINUSE';
}

/** Serve /metrics, /healthz and /readyz for `endpoint` on `port` (0 = ephemeral). */
export async function serveMetrics(endpoint: Endpoint, port: number, opts: ServeOptions = {}): Promise<MetricsServer> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    const text = (status: number, body: string, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { 'content-type': type });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (path === '/healthz') return text(200, 'ok\n');
    if (path === '/readyz') return endpoint.isReady() ? text(200, 'ready\n') : text(503, 'not ready\n');
    if (path === '/metrics') {
      endpoint.registry.metrics().then(
        (body) => text(200, body, endpoint.registry.contentType),
        (err: unknown) => text(500, `collecting metrics failed: ${String(err)}\n`),
      );
      return;
    }
    text(404, 'not found: try /metrics, /healthz or /readyz\n');
  });
  // Scrapes and probes are short; do not let an idle keep-alive socket hold close() up.
  server.keepAliveTimeout = 5_000;

  const bound = await listenWithTries(server, port, opts);
  return {
    port: bound,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}

/** Listen on `port`, or on the next ones while they are taken (up to `opts.tries` in all). */
async function listenWithTries(server: Server | NetServer, port: number, opts: ServeOptions): Promise<number> {
  const tries = port === 0 ? 1 : Math.max(1, opts.tries ?? 1);
  let lastError: unknown;
  for (let i = 0; i < tries && port + i <= 65535; i++) {
    try {
      return await listen(server, port + i, opts.host);
    } catch (err) {
      lastError = err;
      if (!isAddrInUse(err)) break;
    }
  }
  // Nothing tried at all: the range starts above the last TCP port.
  if (lastError === undefined)
    throw new Error(`metrics: port ${port} is not a TCP port (0 to 65535); choose another --metrics-port (0 picks a free one)`);
  const last = Math.min(port + tries - 1, 65535);
  const span = last > port ? `ports ${port}-${last}` : `port ${port}`;
  throw new Error(
    `metrics: cannot listen on ${span}${opts.host ? ` of ${opts.host}` : ''}: ${(lastError as Error)?.message ?? String(lastError)}; ` +
      'choose another --metrics-port (0 picks a free one)',
  );
}

/**
 * The first port at or above `start` that can be bound now (checked by binding and closing it).
 * For a coordinator handing ports to the workers it spawns; another process may still take the
 * port before the worker binds it, so workers should also serve with `tries` > 1.
 */
export async function findFreePort(start: number, opts: ServeOptions = {}): Promise<number> {
  const probe = createNetServer();
  const port = await listenWithTries(probe, start, { tries: 100, ...opts });
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

/**
 * Metrics ports for `n` workers spawned beside a process that serves on `after`: the next free
 * ports above it, in order, each checked as findFreePort does (so they do not collide with each
 * other or with anything listening now); `n` zeros (each worker binds its own ephemeral port) when
 * `after` is 0. The workers should still serve with `tries` > 1 and log the port they bound.
 */
export async function nextFreePorts(after: number, n: number, opts: ServeOptions = {}): Promise<number[]> {
  const ports: number[] = [];
  for (let i = 0; i < n; i++) ports.push(after === 0 ? 0 : await findFreePort((ports.at(-1) ?? after) + 1, opts));
  return ports;
}
