/**
 * One rank for c10d.test.ts, in a child process of its own (started with fork), driven by IPC
 * messages { seq, op, ... }, each answered { seq, ... } or { seq, error } with the one-line
 * message of whatever threw:
 *   ping                                -> {} (the peer has loaded the addon)
 *   listen                              a store server on 127.0.0.1, any port -> { port }
 *   create { id, options }              joins a process group, kept under `id` -> {}
 *   allreduce { ids: [{ id, seed }], kind, n }
 *                                       issues one all-reduce per entry, without waiting between
 *                                       them, of rankValues(kind, n, seed, rank) -> { results:
 *                                       [{ digest, head } | { error }] }
 *   close { id }                        closes group `id` -> {}
 */
import { ProcessGroup, StoreServer, type GroupOptions } from '../../src/worker/collective/process-group.js';
import { digest, rankValues, type ValueKind } from './c10d-values.js';

interface Request {
  seq: number;
  op: 'ping' | 'listen' | 'create' | 'allreduce' | 'close';
  id?: string;
  options?: GroupOptions;
  ids?: { id: string; seed: number }[];
  kind?: ValueKind;
  n?: number;
}

const groups = new Map<string, ProcessGroup>();
const servers: StoreServer[] = [];

function group(id: string | undefined): ProcessGroup {
  const g = groups.get(id ?? '');
  if (g === undefined) throw new Error(`no group '${id}'`);
  return g;
}

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

async function allreduce(r: Request): Promise<unknown> {
  const calls = (r.ids ?? []).map(({ id, seed }) => {
    const g = group(id);
    const v = rankValues(r.kind ?? 'normal', r.n ?? 0, seed, g.rank);
    return g.allreduceSum(v).then(
      () => ({ digest: digest(v), head: Array.from(v.subarray(0, 3)) }),
      (e: unknown) => ({ error: message(e) }),
    );
  });
  return { results: await Promise.all(calls) };
}

async function handle(r: Request): Promise<unknown> {
  switch (r.op) {
    case 'ping':
      return {};
    case 'listen': {
      const s = await StoreServer.listen('127.0.0.1', 0);
      servers.push(s);
      return { port: s.port };
    }
    case 'create':
      groups.set(r.id ?? '', await ProcessGroup.create(r.options as GroupOptions));
      return {};
    case 'allreduce':
      return allreduce(r);
    case 'close':
      group(r.id).close();
      groups.delete(r.id ?? '');
      return {};
  }
}

process.on('message', (r: Request) => {
  handle(r).then(
    (out) => process.send?.({ seq: r.seq, ...(out as object) }),
    (e: unknown) => process.send?.({ seq: r.seq, error: message(e) }),
  );
});
// The test ends a peer by closing the IPC channel (or by SIGKILL).
process.on('disconnect', () => process.exit(0));
