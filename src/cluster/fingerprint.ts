/**
 * What a process runs, so that a coordinator and its workers can check they run the same:
 * the package version, a SHA-256 over the compiled JavaScript (`dist/src`, every file's path
 * and bytes), and a SHA-256 of the torch addon binary (`none` where it is not built). Workers
 * send it in their Join; the coordinator refuses a different one in one line, and so does the
 * worker (the refusal's reason). The training config needs no fingerprint: every worker
 * trains with the config the coordinator hands out in its Welcome.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { packagePath, packageRoot } from '../core/paths.js';
import { ADDON_PATH } from '../core/backend/torch/addon.js';

export interface Fingerprint {
  version: string;
  code: string;
  addon: string;
}

function files(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...files(p));
    else if (e.name.endsWith('.js')) out.push(p);
  }
  return out.sort();
}

let cached: string | undefined;

/** This process's fingerprint, as the one-line string a Join carries: `scoreflow VERSION code HEX addon HEX|none`. */
export function buildFingerprint(): string {
  if (cached) return cached;
  const root = packageRoot();
  const version = (JSON.parse(readFileSync(packagePath('package.json'), 'utf8')) as { version: string }).version;
  const code = createHash('sha256');
  const src = packagePath('dist', 'src');
  for (const f of existsSync(src) ? files(src) : []) code.update(relative(root, f)).update('\0').update(readFileSync(f)).update('\0');
  const addonFile = packagePath(...ADDON_PATH);
  const addon = existsSync(addonFile) ? createHash('sha256').update(readFileSync(addonFile)).digest('hex').slice(0, 16) : 'none';
  cached = `scoreflow ${version} code ${code.digest('hex').slice(0, 16)} addon ${addon}`;
  return cached;
}

export function parseFingerprint(s: string): Fingerprint | undefined {
  const m = /^scoreflow (\S+) code ([0-9a-f]+) addon ([0-9a-f]+|none)$/.exec(s);
  return m ? { version: m[1], code: m[2], addon: m[3] } : undefined;
}

/**
 * Why a worker built as `theirs` may not join a coordinator built as `ours` (undefined: it may).
 * The addon is compared where both have one (a wasm-only worker elsewhere has none).
 */
export function buildMismatch(ours: string, theirs: string): string | undefined {
  const a = parseFingerprint(ours);
  const b = parseFingerprint(theirs);
  if (!b) return `the worker sends no build fingerprint (${JSON.stringify(theirs)}), the coordinator runs ${ours}`;
  if (!a || a.version !== b.version || a.code !== b.code || (a.addon !== 'none' && b.addon !== 'none' && a.addon !== b.addon))
    return `the worker runs ${theirs}, the coordinator ${ours}: start both from the same build`;
  return undefined;
}
