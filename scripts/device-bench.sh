#!/usr/bin/env bash
# Runs ON a GPU machine without Node or network, from the repo root, with .device/ carried (made by
# scripts/device-prepare.sh): unpacks Node, builds the torch addon against that machine's PyTorch
# (a CUDA libtorch), and runs the bench's torch and core sections on the GPU beside PyTorch on the
# same GPU (reference/torch_baseline_device.py, from the .device/reference copy), then, time allowing,
# on the CPU.
#
# usage: OUT=/some/dir bash scripts/device-bench.sh
# env:   OUT        where everything is written (default /tmp/device-out); the log is OUT/device-bench.log
#        DEVICE     torch device for the main run (default cuda:0)
#        THREADS    libtorch/PyTorch intra-op threads for the main run (default 16)
#        CPU_THREADS  threads of the CPU run (default 16; CPU_THREADS=0 skips it)
#        PYTHON     the python3 that has torch (default python3)
#        TORCH_DIR  libtorch folder with include/ and lib/ (default: the torch/ folder of $PYTHON's torch)
#        BUDGET_S   seconds the whole script may take (default 450); QUICK=1 passes --quick to the bench
#        BUILD_WITH=g++  skip node-gyp and compile and link with g++ directly (the fallback it takes
#                   by itself when node-gyp cannot run)
# Files in OUT: device-bench.log, build.log, torch-info.txt, bench-<device type>.json (bench-cuda.json),
# bench-cpu<threads>.json, summary.txt. Every step logs; a failed step is reported and the rest go on
# where they can, so whatever happened comes back.
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/device-out}
DEVICE=${DEVICE:-cuda:0}
THREADS=${THREADS:-16}
CPU_THREADS=${CPU_THREADS:-16}
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
QUICK=${QUICK:-}
BUILD_WITH=${BUILD_WITH:-node-gyp}
START=$(date +%s)
mkdir -p "$OUT"
LOG=$OUT/device-bench.log

step() { printf '\n==== [%4ds] %s\n' "$(($(date +%s) - START))" "$*"; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
# seconds left less a reserve of $1, but never under 30
until_reserve() { local s=$(($(left) - $1)); echo $((s < 30 ? 30 : s)); }
fail() { echo "device-bench: FAILED: $*"; }

main() {
step "machine"
date -u
uname -a
echo "cores: $(nproc)"; free -g | head -2
command -v nvidia-smi >/dev/null && timeout 30 nvidia-smi
for t in g++ c++ make python3 nvcc cmake ninja; do printf '%-8s %s\n' "$t" "$(command -v $t || echo MISSING)"; done
g++ --version 2>&1 | head -1

step "Node from .device/node.tar.xz"
NODE_HOME=/tmp/scoreflow-node
rm -rf "$NODE_HOME" && mkdir -p "$NODE_HOME"
if ! tar -C "$NODE_HOME" -xJf .device/node.tar.xz; then
  echo "tar -xJ failed (no xz here?): unpacking with Python's tarfile instead"
  "$PYTHON" -c 'import sys, tarfile
t = tarfile.open(sys.argv[1])
t.extractall(sys.argv[2], **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))' .device/node.tar.xz "$NODE_HOME" ||
    { fail "unpacking Node"; exit 1; }
fi
export PATH=$NODE_HOME/node/bin:$PATH
# node-gyp's Linux builds are Makefiles: this machine's make if it has one, else the carried one
command -v make >/dev/null || export PATH=$PATH:$ROOT/.device/bin
echo "node $(node --version) at $(command -v node); make: $(command -v make)"

step "PyTorch ($PYTHON)"
"$PYTHON" - <<'EOF' 2>&1 | tee "$OUT/torch-info.txt"
import os, torch
print("torch", torch.__version__, "at", os.path.dirname(torch.__file__))
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
if torch.cuda.is_available():
    print("device 0:", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
print("cudnn", torch.backends.cudnn.version(), "cxx11 abi", torch._C._GLIBCXX_USE_CXX11_ABI)
print("threads", torch.get_num_threads(), "mkldnn", torch.backends.mkldnn.is_available())
EOF
if [ -z "${TORCH_DIR:-}" ]; then
  TORCH_DIR=$("$PYTHON" -c 'import torch,os;print(os.path.dirname(torch.__file__))') || { fail "import torch"; exit 1; }
fi
export TORCH_DIR
echo "TORCH_DIR=$TORCH_DIR"
grep -m1 -n '__cplusplus' "$TORCH_DIR/include/ATen/ATen.h" | tee -a "$OUT/torch-info.txt"
# The CUDA libraries of a pip-installed torch live in site-packages/nvidia/*/lib; libtorch_cuda.so
# finds them through its RUNPATH, and naming them here too covers a layout where it would not.
NV_LIBS=$("$PYTHON" - <<'EOF' 2>/dev/null
import glob, os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
print(":".join(sorted({os.path.dirname(p) for p in glob.glob(os.path.join(site, "nvidia", "**", "lib", "*.so*"), recursive=True)})))
EOF
)
export LD_LIBRARY_PATH=$TORCH_DIR/lib${NV_LIBS:+:$NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

# ---- the addon: native/build.mjs (node-gyp, --nodedir from the unpacked Node); on a compile error
# once more at C++20; if node-gyp itself cannot run, the same compile and link with g++ directly.
ADDON=native/build/Release/scoreflow_torch.node
build_direct() { # $1: -std value
  local b=native/build/Release abi src objs=() sources=()
  # The addon's own files: every native/src/*.cc but the two plain-C++ libraries (see binding.gyp).
  for src in native/src/*.cc; do case $src in */fused.cc | */adam.cc) ;; *) sources+=("$src") ;; esac; done
  abi=$("$PYTHON" -c 'import torch;print(int(torch._C._GLIBCXX_USE_CXX11_ABI))' 2>/dev/null || echo 1)
  local libs=(-lc10 -ltorch_cpu)
  [ -f "$TORCH_DIR/lib/libtorch.so" ] && libs+=(-ltorch)
  [ -f "$TORCH_DIR/lib/libtorch_cuda.so" ] && libs+=(-Wl,--no-as-needed -ltorch_cuda) &&
    { [ -f "$TORCH_DIR/lib/libc10_cuda.so" ] && libs+=(-lc10_cuda); libs+=(-Wl,--as-needed); }
  mkdir -p "$b/direct" && set -x &&
    g++ -c -fPIC -pthread -m64 -O3 -fno-trapping-math -fno-math-errno -fexceptions -std=gnu++17 native/src/fused.cc -o "$b/direct/fused.o" &&
    g++ -c -fPIC -pthread -m64 -O3 -ffp-contract=off -fno-math-errno -std=gnu++17 native/src/adam.cc -o "$b/direct/adam.o" &&
    for src in "${sources[@]}"; do
      g++ -c -fPIC -pthread -m64 -O2 -fexceptions -frtti -Wno-unused-parameter -Wno-deprecated-declarations "-std=$1" \
        "-D_GLIBCXX_USE_CXX11_ABI=$abi" -DNODE_GYP_MODULE_NAME=scoreflow_torch -DBUILDING_NODE_EXTENSION \
        -I"$NODE_HOME/node/include/node" -I"$TORCH_DIR/include" -I"$TORCH_DIR/include/torch/csrc/api/include" \
        "$src" -o "$b/direct/$(basename "$src" .cc).o" || break
      objs+=("$b/direct/$(basename "$src" .cc).o")
    done &&
    [ "${#objs[@]}" -eq "${#sources[@]}" ] &&
    g++ -shared -pthread -rdynamic -m64 -o "$ADDON" "${objs[@]}" "$b/direct/fused.o" "$b/direct/adam.o" \
      -L"$TORCH_DIR/lib" -Wl,-rpath,"$TORCH_DIR/lib" "${libs[@]}"
  local rc=$?
  set +x
  return $rc
}
step "build the addon against $TORCH_DIR"
built=
if [ "$BUILD_WITH" = g++ ]; then
  : >"$OUT/build.log"
else
  SCOREFLOW_BUILD_LOG=$OUT/build.log timeout "$(until_reserve 120)" node native/build.mjs --force && built=native/build.mjs
fi
if [ -z "$built" ]; then
  if [ "$BUILD_WITH" != g++ ] && grep -qE '\.(cc|h|hpp)(:[0-9]+)+: error' "$OUT/build.log" 2>/dev/null; then
    step "compile errors (see build.log): again at -std=gnu++20"
    cp "$OUT/build.log" "$OUT/build-first.log.txt" 2>/dev/null
    SCOREFLOW_TORCH_CXXSTD=gnu++20 SCOREFLOW_BUILD_LOG=$OUT/build.log timeout "$(until_reserve 100)" node native/build.mjs --force &&
      built='native/build.mjs at gnu++20'
  else
    step "g++ directly (BUILD_WITH=$BUILD_WITH, or node-gyp did not get to compiling: see build.log)"
    std=$(node -e "const t=require('fs').readFileSync(process.argv[1],'utf8');const m=/__cplusplus\s*<\s*(\d{6})L/.exec(t);console.log(m&&+m[1]>=202002?'gnu++20':'gnu++17')" "$TORCH_DIR/include/ATen/ATen.h")
    build_direct "$std" >>"$OUT/build.log" 2>&1 && node -e "require('./$ADDON')" && built="g++ directly at $std"
  fi
fi
tail -n 30 "$OUT/build.log" 2>/dev/null
if [ -z "$built" ]; then fail "building the addon (OUT/build.log has the whole log)"; exit 1; fi
echo "built with $built"
node -e "const a=require('./$ADDON'); console.log('addon info:', JSON.stringify(a.info()))" || fail "loading the addon"

run_bench() { # $1: output file, $2: seconds, rest: bench flags
  local out=$1 secs=$2
  shift 2
  echo "node .device/bench/main.mjs $*  (at most ${secs}s)"
  timeout "$secs" node .device/bench/main.mjs --only torch,core --backends torch --reference-dir .device/reference \
    --python "$PYTHON" ${QUICK:+--quick} "$@" >"$out"
  local rc=$?
  [ $rc -eq 0 ] || fail "bench exited $rc"
  return $rc
}
ratios() { # one line per thread count: our figures over PyTorch's
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const f = (x) => (typeof x === "number" ? x.toFixed(2) : String(x));
    for (const [k, v] of Object.entries(r.ratio_to_pytorch ?? {}))
      console.log(`${process.argv[1].split("/").pop()} ${k}: train 32 ${f(v.train_batch_32)}x, train 128 ${f(v.train_batch_128)}x, forward ${f(v.forward_64)}x, forward+grad ${f(v.forward_input_grad_64)}x`);
    for (const [k, v] of Object.entries(r.core ?? {})) if (v.error) console.log(`${k}: error ${v.error}`);
    for (const [k, v] of Object.entries(r.pytorch ?? {})) for (const [b, p] of Object.entries(v)) if (p.error) console.log(`pytorch ${k} ${b}: error ${p.error}`);
  ' "$1"
}

MAIN=$OUT/bench-${DEVICE%%:*}.json
step "bench on $DEVICE, $THREADS threads, PyTorch on $DEVICE beside it -> $(basename "$MAIN")"
run_bench "$MAIN" "$(until_reserve 20)" --device "$DEVICE" --device-baseline --threads "$THREADS" && ratios "$MAIN" | tee "$OUT/summary.txt"

if [ "$CPU_THREADS" != 0 ] && [ "$(left)" -gt 150 ]; then
  CPU_OUT=$OUT/bench-cpu$CPU_THREADS.json
  step "bench on the CPU, $CPU_THREADS threads, PyTorch's CPU baseline beside it -> $(basename "$CPU_OUT")"
  run_bench "$CPU_OUT" "$(until_reserve 10)" --device cpu --threads "$CPU_THREADS" && ratios "$CPU_OUT" | tee -a "$OUT/summary.txt"
else
  step "CPU run skipped ($(left)s left of $BUDGET_S, CPU_THREADS=$CPU_THREADS)"
fi
step "done"
ls -la "$OUT"
}

# Everything main prints goes to the terminal and to the log.
main 2>&1 | tee -a "$LOG"
