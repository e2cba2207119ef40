#!/usr/bin/env node
// Builds the libtorch addon behind the `torch` tfjs backend (native/build/Release/scoreflow_torch.node).
//
//   node native/build.mjs            what `npm install` runs: build if libtorch is found, else a
//                                    one-line notice; never fails the install
//   node native/build.mjs --force    rebuild even when up to date, and exit non-zero on failure
//   SCOREFLOW_REQUIRE_TORCH=1        exit non-zero when libtorch is missing or the build fails (CI)
//   SCOREFLOW_TORCH_CXXSTD=gnu++20   the C++ standard (default: what libtorch's ATen.h asks for)
//   SCOREFLOW_BUILD_LOG=FILE         write node-gyp's whole output there
//
// libtorch is looked for in $LIBTORCH_DIR, then $TORCH_DIR (a folder with include/ and lib/, such
// as libtorch's zip or the torch/ folder of a PyTorch installation:
//   python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))'),
// then in Debian's libtorch-dev (/usr/include/ATen, /usr/lib/<multiarch>/libtorch_cpu.so).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, realpathSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const addon = join(here, 'build', 'Release', 'scoreflow_torch.node');
const stampFile = join(here, 'build', 'scoreflow-build.json');
const force = process.argv.includes('--force');
const strict = force || process.env.SCOREFLOW_REQUIRE_TORCH === '1';

const say = (line) => process.stderr.write(`scoreflow: ${line}\n`);

/** Ends the script: status 0 unless strict mode was asked for and this is a failure. */
function finish(failed) {
  process.exit(failed && strict ? 1 : 0);
}

/** A libtorch layout { includes, libdir, origin } or a string saying why the folder is not one. */
function fromDir(dir, origin) {
  const inc = join(dir, 'include');
  if (!existsSync(join(inc, 'ATen', 'ATen.h'))) return `${origin}=${dir} has no include/ATen/ATen.h`;
  const libdir = join(dir, 'lib');
  if (!existsSync(join(libdir, 'libtorch_cpu.so')) && !existsSync(join(libdir, 'libtorch.so'))) {
    return `${origin}=${dir} has no lib/libtorch_cpu.so`;
  }
  const includes = [inc];
  const api = join(inc, 'torch', 'csrc', 'api', 'include');
  if (existsSync(api)) includes.push(api);
  return { includes, libdir, origin: `${origin}=${dir}` };
}

/** Folders a system library may be in: the multiarch ones first, then /usr/lib64, /usr/lib. */
function systemLibDirs() {
  const dirs = ['/usr/lib64', '/usr/lib'];
  try {
    for (const d of readdirSync('/usr/lib')) if (d.endsWith('-linux-gnu')) dirs.unshift(join('/usr/lib', d));
  } catch {
    /* no /usr/lib: nothing to add */
  }
  return dirs;
}

function debian() {
  if (!existsSync('/usr/include/ATen/ATen.h')) return null;
  const libdir = systemLibDirs().find((d) => existsSync(join(d, 'libtorch_cpu.so')));
  if (!libdir) return null;
  // /usr/include is on the default path already; naming it with -I would upset #include_next.
  const api = '/usr/include/torch/csrc/api/include';
  return { includes: existsSync(api) ? [api] : [], libdir, origin: 'libtorch-dev' };
}

function findTorch() {
  for (const name of ['LIBTORCH_DIR', 'TORCH_DIR']) {
    const dir = process.env[name];
    if (dir) return fromDir(dir, name);
  }
  return debian() ?? 'libtorch not found';
}

/** libtorch built with the old C++ ABI (PyTorch's pip wheels before 2.x) must be matched. */
function cxx11Abi(libdir) {
  try {
    const lib = readFileSync(realpathSync(join(libdir, 'libc10.so')));
    return lib.includes('__cxx11') ? '1' : '0';
  } catch {
    return '1';
  }
}

/**
 * The C++ standard to compile against: the one libtorch's own header guard asks for (ATen/ATen.h:
 * `__cplusplus < 201402L` in 1.13, `201703L` in 2.1 to 2.13, `202002L` from 2.14), at least gnu++17,
 * which is what Node's common.gypi passes anyway. SCOREFLOW_TORCH_CXXSTD overrides it.
 */
function cxxStd(includes) {
  if (process.env.SCOREFLOW_TORCH_CXXSTD) return process.env.SCOREFLOW_TORCH_CXXSTD;
  const dirs = [...includes, '/usr/include'];
  for (const d of dirs) {
    let text;
    try {
      text = readFileSync(join(d, 'ATen', 'ATen.h'), 'utf8');
    } catch {
      continue;
    }
    const m = /__cplusplus\s*<\s*(\d{6})L/.exec(text);
    return m && Number(m[1]) >= 202002 ? 'gnu++20' : 'gnu++17';
  }
  return 'gnu++17';
}

function libs(libdir) {
  const has = (n) => existsSync(join(libdir, `lib${n}.so`));
  const l = ['-lc10', '-ltorch_cpu'];
  if (has('torch')) l.push('-ltorch');
  // A CUDA build registers its device hooks from these; keep them even though no symbol is used.
  if (has('torch_cuda')) l.push('-Wl,--no-as-needed', '-ltorch_cuda', ...(has('c10_cuda') ? ['-lc10_cuda'] : []), '-Wl,--as-needed');
  return l;
}

const C10D = join('torch', 'csrc', 'distributed', 'c10d');

/** c10d over Gloo: libtorch's ProcessGroupGloo.hpp, gloo's headers and libgloo (Debian: libgloo-dev). */
function glooConfig(torch, find) {
  if (!find.torchHeader(join(C10D, 'ProcessGroupGloo.hpp'))) return { why: 'libtorch ships no c10d/ProcessGroupGloo.hpp' };
  if (!find.header(join('gloo', 'config.h'))) return { why: 'no gloo headers (install libgloo-dev)' };
  const dir = find.lib('gloo');
  if (!dir) return { why: 'no libgloo.so (install libgloo-dev)' };
  const search = dir === torch.libdir || systemLibDirs().includes(dir) ? [] : [`-L${dir}`, `-Wl,-rpath,${dir}`];
  return { defines: ['USE_C10D_GLOO'], libs: [...search, '-lgloo'] };
}

/**
 * c10d over NCCL: a libtorch built with CUDA (libtorch_cuda.so, ProcessGroupNCCL.hpp) and the CUDA
 * runtime and NCCL headers its headers include: from $CUDA_HOME or /usr/local/cuda, or, for a
 * PyTorch wheel, the nvidia/* wheels installed beside torch/.
 */
function ncclConfig(torch, find) {
  if (!existsSync(join(torch.libdir, 'libtorch_cuda.so'))) return { why: 'libtorch without CUDA' };
  if (!find.torchHeader(join(C10D, 'ProcessGroupNCCL.hpp'))) return { why: 'libtorch ships no c10d/ProcessGroupNCCL.hpp' };
  const cuda = [process.env.CUDA_HOME, '/usr/local/cuda'].filter(Boolean).map((d) => join(d, 'include'));
  const wheels = join(dirname(dirname(torch.libdir)), 'nvidia');
  try {
    for (const d of readdirSync(wheels)) cuda.push(join(wheels, d, 'include'));
  } catch {
    /* not a wheel layout */
  }
  const includes = cuda.filter((d) => existsSync(d));
  const header = (rel) => find.header(rel) ?? includes.find((d) => existsSync(join(d, rel)));
  for (const h of ['cuda_runtime_api.h', 'nccl.h']) if (!header(h)) return { why: `no ${h} (set CUDA_HOME)` };
  const ncclDir = [torch.libdir, ...includes.map((d) => join(dirname(d), 'lib')), ...systemLibDirs()].find(
    (d) => existsSync(join(d, 'libnccl.so')) || existsSync(join(d, 'libnccl.so.2')),
  );
  const nccl = ncclDir
    ? [`-L${ncclDir}`, `-Wl,-rpath,${ncclDir}`, existsSync(join(ncclDir, 'libnccl.so')) ? '-lnccl' : '-l:libnccl.so.2']
    : [];
  return { defines: ['USE_C10D_NCCL'], includes, libs: nccl };
}

/**
 * Which c10d back-ends the addon compiles (native/src/c10d.cc): { defines, includes, libs, gloo,
 * nccl }, gloo and nccl being '' when compiled, else why not.
 */
function c10dConfig(torch) {
  const incs = [...torch.includes, '/usr/include'];
  // libtorch's own headers from its own folder only: /usr/include may hold another version's.
  const torchIncs = torch.origin === 'libtorch-dev' ? ['/usr/include'] : torch.includes;
  const libDirs = [torch.libdir, ...systemLibDirs()];
  const find = {
    torchHeader: (rel) => torchIncs.find((d) => existsSync(join(d, rel))),
    header: (rel) => incs.find((d) => existsSync(join(d, rel))),
    lib: (name) => libDirs.find((d) => existsSync(join(d, `lib${name}.so`))),
  };
  const parts = { gloo: glooConfig(torch, find), nccl: ncclConfig(torch, find) };
  const out = { defines: [], includes: [], libs: [], gloo: parts.gloo.why ?? '', nccl: parts.nccl.why ?? '' };
  for (const p of Object.values(parts)) {
    out.defines.push(...(p.defines ?? []));
    out.includes.push(...(p.includes ?? []));
    out.libs.push(...(p.libs ?? []));
  }
  return out;
}

function nodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    join(here, '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  return candidates.find((p) => p && existsSync(p)) ?? null;
}

function newestSource() {
  const files = [join(here, 'binding.gyp'), join(here, 'build.mjs')];
  for (const f of readdirSync(join(here, 'src'))) files.push(join(here, 'src', f));
  return Math.max(...files.map((f) => statSync(f).mtimeMs));
}

function loads() {
  const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(addon)})`], { encoding: 'utf8' });
  return r.status === 0
    ? null
    : ((r.stderr || r.stdout)
        .trim()
        .split('\n')
        .find((l) => /Error/.test(l)) ?? 'load failed');
}

const torch = findTorch();
if (typeof torch === 'string') {
  say(`${torch}; skipping the torch backend (wasm still works). Install libtorch-dev or set LIBTORCH_DIR.`);
  finish(true);
}

const c10d = c10dConfig(torch);
const config = {
  ...torch,
  includes: [...torch.includes, ...c10d.includes],
  abi: cxx11Abi(torch.libdir),
  libs: [...libs(torch.libdir), ...c10d.libs],
  std: cxxStd(torch.includes),
  defines: c10d.defines,
};
// gnu++17 is what every build before this setting had: leave it out of the key, so it forces no
// rebuild. The c10d choice (defines) is in the key: installing libgloo-dev rebuilds.
const key = JSON.stringify(config.std === 'gnu++17' ? { ...config, std: undefined } : config);
const c10dNote = `c10d gloo: ${c10d.gloo || 'yes'}, nccl: ${c10d.nccl || 'yes'}`;
if (!force && existsSync(addon) && existsSync(stampFile)) {
  const stamp = JSON.parse(readFileSync(stampFile, 'utf8'));
  if (stamp.key === key && statSync(addon).mtimeMs >= newestSource() && loads() === null) {
    say(`torch backend up to date (${torch.origin})`);
    finish(false);
  }
}

const gyp = nodeGyp();
if (!gyp) {
  say('node-gyp not found (it ships with npm); skipping the torch backend (wasm still works).');
  finish(true);
}

const args = [gyp, 'rebuild', '--release', '--jobs', '1'];
const nodedir = dirname(dirname(process.execPath));
if (existsSync(join(nodedir, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${nodedir}`);

say(`building the torch backend against ${torch.origin} (a minute or two)...`);
const t0 = Date.now();
const r = spawnSync(process.execPath, args, {
  cwd: here,
  encoding: 'utf8',
  maxBuffer: 64 << 20,
  env: {
    ...process.env,
    SCOREFLOW_TORCH_INCLUDES: config.includes.join(' '),
    SCOREFLOW_TORCH_LIBDIR: config.libdir,
    SCOREFLOW_TORCH_LIBS: config.libs.join(' '),
    SCOREFLOW_TORCH_CXX11_ABI: config.abi,
    SCOREFLOW_TORCH_CXXSTD: config.std,
    SCOREFLOW_TORCH_DEFINES: config.defines.join(' '),
  },
});
// SCOREFLOW_BUILD_LOG=FILE keeps node-gyp's whole output (the device script returns it).
if (process.env.SCOREFLOW_BUILD_LOG)
  writeFileSync(process.env.SCOREFLOW_BUILD_LOG, `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? `\n${r.error.message}\n` : ''}`);
if (r.status !== 0) {
  const log = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n');
  const errors = log.filter((l) => /error|Error|ERR!/.test(l)).slice(0, 20);
  process.stderr.write(`${(errors.length ? errors : log.slice(-20)).join('\n')}\n`);
  say('building the torch backend failed (see above); skipping it (wasm still works). Rebuild with: node native/build.mjs --force');
  finish(true);
}
const loadError = loads();
if (loadError !== null) {
  say(`the torch backend was built but does not load: ${loadError}; skipping it (wasm still works).`);
  finish(true);
}
mkdirSync(dirname(stampFile), { recursive: true });
writeFileSync(stampFile, JSON.stringify({ key, built: new Date().toISOString() }));
say(
  `torch backend built in ${((Date.now() - t0) / 1000).toFixed(0)} s (${torch.origin}, ${config.libdir}, -std=${config.std}; ${c10dNote})`,
);
finish(false);
