/**
 * c10d from the torch addon (native/src/c10d.cc): a rendezvous store server (native/src/store.cc) that one worker hosts for its
 * whole life, and process groups that sum a Float32Array over their ranks, in place. Gloo runs on
 * CPU; NCCL (where libtorch has CUDA) copies the buffer to the GPU and back.
 *
 * Groups of successive memberships share one store server, each under its own key prefix, so
 * their rendezvous keys never collide. Creating a group is a rendezvous: its promise settles when
 * every rank has arrived, or rejects after the timeout. Nothing here blocks the JS thread, and an
 * idle group or server does not keep Node running (a call in flight does).
 */
import { loadTorchAddon, type C10dOps, type NativeHandle } from '../../core/backend/torch/addon.js';

/** A store client that holds part of a request this long is disconnected (a real request is a few hundred bytes, sent at once). */
export const STORE_REQUEST_TIMEOUT_MS = 5000;

export interface C10dInfo {
  gloo: boolean;
  nccl: boolean;
  /** '' when both are there, else one line saying what is missing. */
  why: string;
}

export interface GroupOptions {
  backend: 'gloo' | 'nccl';
  /** Rank 0's store server (StoreServer.listen there). */
  storeHost: string;
  storePort: number;
  /** Key prefix, new for each membership: groups on one store never see each other's keys. */
  prefix: string;
  rank: number;
  worldSize: number;
  /** For the rendezvous and for each collective. */
  timeoutMs: number;
  /** gloo: a network interface name, or a hostname or address to bind; default: the address this
   *  machine reaches storeHost from. */
  iface?: string;
  /** nccl: the CUDA device; default: the current one. */
  device?: number;
}

const REBUILD = 'node native/build.mjs --force';

function firstLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split('\n')[0];
}

/** Why each back-end is missing ('' where it is there). */
function missing(): { gloo: string; nccl: string } {
  const both = (why: string) => ({ gloo: why, nccl: why });
  try {
    const addon = loadTorchAddon();
    if (addon.c10d === undefined) return both(`the addon was built before c10d existed (rebuild it: ${REBUILD})`);
    const { gloo, nccl } = addon.c10d.info();
    const noNccl = addon.info().cuda
      ? `built without c10d nccl (rebuild where NCCL's headers are: ${REBUILD})`
      : 'libtorch without CUDA (or no GPU visible)';
    return { gloo: gloo ? '' : `built without c10d gloo (install libgloo-dev and rebuild: ${REBUILD})`, nccl: nccl ? '' : noNccl };
  } catch (e) {
    return both(`addon not built or not loading: ${firstLine(e)}`);
  }
}

/** Which c10d back-ends this addon has, and why not; never throws. */
export function c10dInfo(): C10dInfo {
  const m = missing();
  return { gloo: m.gloo === '', nccl: m.nccl === '', why: [...new Set([m.gloo, m.nccl].filter((w) => w !== ''))].join('; ') };
}

/** The addon's c10d functions; throws one line when `backend` is missing (no backend: both). */
function ops(backend?: 'gloo' | 'nccl'): C10dOps {
  const m = missing();
  if (backend !== undefined && m[backend]) throw new Error(`c10d: backend '${backend}' is unavailable: ${m[backend]}`);
  if (m.gloo && m.nccl) throw new Error(`c10d is unavailable: ${c10dInfo().why}`);
  return loadTorchAddon().c10d as C10dOps;
}

function isPort(p: unknown, min: number): p is number {
  return Number.isInteger(p) && (p as number) >= min && (p as number) <= 65535;
}

export class StoreServer {
  private handle: NativeHandle | undefined;

  private constructor(
    private readonly native: C10dOps,
    handle: NativeHandle,
    readonly host: string,
    readonly port: number,
  ) {
    this.handle = handle;
  }

  /**
   * Starts a store server on `host`:`port` (0: a free port, reported in .port), listening on
   * that address only (native/src/store.cc, not libtorch's TCPStore, which listens on every
   * address). A request is acted on once all its bytes are in, so a slow client holds up no
   * other; one that holds part of a request for `requestTimeoutMs` is disconnected.
   */
  static async listen(host: string, port = 0, requestTimeoutMs = STORE_REQUEST_TIMEOUT_MS): Promise<StoreServer> {
    if (typeof host !== 'string' || host === '') throw new Error("c10d: the store server needs a host (this machine's name or address)");
    if (!isPort(port, 0)) throw new Error(`c10d: store port must be an integer in [0, 65535] (0: any free port), got ${port}`);
    const native = ops();
    const handle = await native.listen(host, port, Math.ceil(requestTimeoutMs)).catch((e: unknown) => {
      throw new Error(`c10d: store server on ${host}:${port} failed: ${firstLine(e)}`);
    });
    return new StoreServer(native, handle, host, native.storePort(handle));
  }

  /**
   * Stops the server off the JS thread (so its port is free a moment later, not at once). Groups
   * already made keep working (their all-reduces go peer to peer); new rendezvous on it fail.
   */
  close(): void {
    if (this.handle !== undefined) this.native.storeClose(this.handle);
    this.handle = undefined;
  }
}

/** Throws one line for the first option that is wrong. */
function checkGroupOptions(o: GroupOptions): void {
  const fail = (line: string): never => {
    throw new Error(`c10d: ${line}`);
  };
  if (o.backend !== 'gloo' && o.backend !== 'nccl') fail(`backend must be 'gloo' or 'nccl', got '${String(o.backend)}'`);
  if (typeof o.storeHost !== 'string' || o.storeHost === '') fail("storeHost must name the machine of rank 0's store server");
  if (!isPort(o.storePort, 1)) fail(`storePort must be an integer in [1, 65535], got ${o.storePort}`);
  if (typeof o.prefix !== 'string' || o.prefix === '') fail('prefix must be a non-empty string, new for each group membership');
  if (!(Number.isInteger(o.worldSize) && o.worldSize >= 1)) fail(`worldSize must be an integer >= 1, got ${o.worldSize}`);
  if (!(Number.isInteger(o.rank) && o.rank >= 0 && o.rank < o.worldSize))
    fail(`rank must be an integer in [0, ${o.worldSize}), got ${o.rank}`);
  if (!(Number.isFinite(o.timeoutMs) && o.timeoutMs > 0)) fail(`timeoutMs must be a positive number of milliseconds, got ${o.timeoutMs}`);
  if (o.iface !== undefined && (typeof o.iface !== 'string' || o.iface === ''))
    fail('iface, when given, must name an interface, host or address');
  if (o.device !== undefined && o.backend !== 'nccl') fail('device is for the nccl backend only');
  if (o.device !== undefined && !(Number.isInteger(o.device) && o.device >= 0))
    fail(`device must be a CUDA device index >= 0, got ${o.device}`);
}

export class ProcessGroup {
  private handle: NativeHandle | undefined;

  private constructor(
    private readonly native: C10dOps,
    handle: NativeHandle,
    readonly rank: number,
    readonly worldSize: number,
    private readonly label: string,
  ) {
    this.handle = handle;
  }

  /** Joins the group: settles once all worldSize ranks have called it with the same prefix. */
  static async create(o: GroupOptions): Promise<ProcessGroup> {
    checkGroupOptions(o);
    const native = ops(o.backend);
    const label = `${o.backend} rank ${o.rank} of ${o.worldSize}, prefix '${o.prefix}'`;
    const args = [o.storeHost, o.storePort, o.prefix, o.rank, o.worldSize, Math.ceil(o.timeoutMs), o.iface ?? '', o.device ?? -1] as const;
    const handle = await native.create(o.backend, ...args).catch((e: unknown) => {
      throw new Error(`c10d: creating the group (${label}, store ${o.storeHost}:${o.storePort}) failed: ${firstLine(e)}`);
    });
    return new ProcessGroup(native, handle, o.rank, o.worldSize, label);
  }

  /**
   * Sums `buf` over the group, in place (no copy on CPU: leave `buf` alone until this settles).
   * Every rank must make the same collectives in the same order; calls run in the order made.
   * Rejects with one line on a timeout or a rank gone; the group is then of no further use.
   */
  async allreduceSum(buf: Float32Array): Promise<void> {
    if (!(buf instanceof Float32Array)) throw new Error('c10d: allreduceSum takes a Float32Array');
    if (this.handle === undefined) throw new Error(`c10d: the group (${this.label}) is closed`);
    await this.native.allreduce(this.handle, buf).catch((e: unknown) => {
      throw new Error(`c10d: all-reduce (${this.label}) failed: ${firstLine(e)}`);
    });
  }

  /** Leaves the group without blocking: calls already made finish, then it is destroyed. */
  close(): void {
    if (this.handle !== undefined) this.native.close(this.handle);
    this.handle = undefined;
  }
}
