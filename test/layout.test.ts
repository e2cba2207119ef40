/**
 * The map of the code (README.md, "Layout") and every other document stay true: a path a
 * document names in backticks exists, every room of src/ is on the map, and each file or
 * folder the map names inside a room is found in that room. A file moved without its docs
 * fails here.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { describe, it } from 'node:test';
import { packagePath } from '../src/core/paths.js';

const ROOT = packagePath();
/** Top-level folders of the repository: a backticked token starting with one of these is a path. */
const TOP = ['src', 'test', 'bench', 'scripts', 'deploy', 'docs', 'native', 'reference', 'proto', 'bin', '.ci'];
const SKIP = new Set(['node_modules', 'dist', 'runs', '.git', 'build', '.device', '.bench']);
const PATHLIKE = /^(\.\.?\/)*[\w.-]+(\/[\w.-]+)*\/?$/;
const SOURCE = /\.(ts|mjs|py|cc|h|sh|proto)$/;

function walk(dir: string, keep: (p: string) => boolean, out: string[] = []): string[] {
  for (const name of readdirSync(dir)) {
    if (SKIP.has(name)) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, keep, out);
    else if (keep(p)) out.push(p);
  }
  return out;
}

/** Every `token` in backticks of a markdown text (code blocks left out). */
function backticked(md: string): string[] {
  const prose = md.replace(/```[\s\S]*?```/g, '');
  return [...prose.matchAll(/`([^`\n]+)`/g)].map((m) => m[1]);
}

/** Paths a document names: root-relative ones (src/..., docs/...) and, beside it, ./x or ../x. */
function namedPaths(mdPath: string): { token: string; resolved: string }[] {
  const out: { token: string; resolved: string }[] = [];
  for (const token of backticked(readFileSync(mdPath, 'utf8'))) {
    if (!PATHLIKE.test(token)) continue;
    if (TOP.some((t) => token.startsWith(`${t}/`))) out.push({ token, resolved: join(ROOT, token) });
    else if (token.startsWith('./') || token.startsWith('../')) out.push({ token, resolved: join(dirname(mdPath), token) });
    // A document inside a folder names that folder's files by their bare names.
    else if (dirname(mdPath) !== ROOT && SOURCE.test(token)) out.push({ token, resolved: join(dirname(mdPath), token) });
  }
  return out;
}

/** The README's Layout table: folder → the text of its "what" column. */
function layoutRows(): Map<string, string> {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('\n## Layout'), readme.indexOf('\n## ', readme.indexOf('\n## Layout') + 1));
  const rows = new Map<string, string>();
  for (const line of section.split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    if (cells.length < 4 || !cells[1].startsWith('`')) continue;
    for (const folder of backticked(cells[1])) rows.set(folder.replace(/\/$/, ''), cells[2]);
  }
  return rows;
}

describe('the map of the code', () => {
  it('every path a markdown document names in backticks exists', () => {
    const docs = walk(ROOT, (p) => p.endsWith('.md'));
    assert.ok(docs.length >= 4, `found only ${docs.length} markdown files`);
    const missing: string[] = [];
    let checked = 0;
    for (const md of docs) {
      for (const { token, resolved } of namedPaths(md)) {
        checked++;
        if (!existsSync(resolved)) missing.push(`${relative(ROOT, md)}: \`${token}\``);
      }
    }
    assert.ok(checked > 50, `only ${checked} paths checked: the token pattern no longer matches the docs`);
    assert.deepEqual(missing, [], `documents name paths that do not exist:\n${missing.join('\n')}`);
  });

  it("the README's Layout table has a row for every room of src/, and every row's folder exists", () => {
    const rows = layoutRows();
    assert.ok(rows.size >= 8, `Layout table has ${rows.size} rows`);
    for (const folder of rows.keys()) assert.ok(existsSync(join(ROOT, folder)), `Layout names ${folder}, which does not exist`);
    const rooms = readdirSync(join(ROOT, 'src')).filter((n) => statSync(join(ROOT, 'src', n)).isDirectory());
    for (const room of rooms) assert.ok(rows.has(`src/${room}`), `src/${room} is missing from the README's Layout table`);
  });

  it('each file or folder a Layout row names inside its room is in that room', () => {
    const missing: string[] = [];
    for (const [folder, what] of layoutRows()) {
      if (!folder.startsWith('src/')) continue;
      const base = join(ROOT, folder);
      const entries = walk(base, () => true).map((p) => relative(base, p));
      const dirs = new Set(
        entries.flatMap((p) =>
          p
            .split('/')
            .slice(0, -1)
            .map((_, i, a) => a.slice(0, i + 1).join('/') + '/'),
        ),
      );
      for (const token of backticked(what)) {
        if (!PATHLIKE.test(token) || !/(\/|\.ts)$/.test(token)) continue;
        const found = token.endsWith('/')
          ? [...dirs].some((d) => d === token || d.endsWith(`/${token}`))
          : entries.some((e) => e === token || e.endsWith(`/${token}`));
        if (!found) missing.push(`${folder}: \`${token}\``);
      }
    }
    assert.deepEqual(missing, [], `the Layout table names what its room does not hold:\n${missing.join('\n')}`);
  });
});
