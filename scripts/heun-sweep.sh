#!/usr/bin/env bash
# How the Heun (EDM) defaults were chosen: draw N samples with PC-500 (the quality target, 1000
# network evaluations) and with Heun under a grid of settings, then score every set with
# `scoreflow evaluate` (Frechet distance in an MNIST classifier's feature space, and more) against
# the MNIST test set. One JSON line per sample set goes to OUT/eval.jsonl.
#
#   bash scripts/heun-sweep.sh CKPT OUT [N]      (N samples per setting, default 512)
#
# The classifier is trained once into OUT/classifier.safetensors (about a minute) if missing.
# Every setting uses the same seed, so all sets start from the same prior draws.
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=${1:?usage: heun-sweep.sh CKPT OUT [N]}
out=${2:?usage: heun-sweep.sh CKPT OUT [N]}
n=${3:-512}
mkdir -p "$out"
sf() { node bin/scoreflow.js "$@"; }

[ -f "$out/classifier.safetensors" ] || sf classifier --epochs 2 --out "$out/classifier.safetensors"

# name | sampler flags (heun: churn 50 puts gamma = min(S_churn / N, sqrt 2 - 1) at its cap for N <= 120)
settings=(
  "pc500|--sampler pc"
  "em500|--sampler em"
  "ode|--sampler ode"
  "heun50-det|--sampler heun --steps 50 --churn 0"
  "heun50-c5|--sampler heun --steps 50 --churn 5"
  "heun50-c10|--sampler heun --steps 50 --churn 10"
  "heun50-cap|--sampler heun --steps 50"
  "heun50-cap-tmax5|--sampler heun --steps 50 --s-tmax 5"
  "heun50-cap-tmax2|--sampler heun --steps 50 --s-tmax 2"
  "heun50-c10-tmax5|--sampler heun --steps 50 --churn 10 --s-tmax 5"
  "heun50-cap-tmin0.05|--sampler heun --steps 50 --s-tmin 0.05"
  "heun50-cap-noise1.007|--sampler heun --steps 50 --s-noise 1.007"
  "heun40-cap|--sampler heun --steps 40"
  "heun25-cap|--sampler heun --steps 25"
)
# the floor: N real MNIST training images (FD depends on N; test images are the reference)
[ -f "$out/real.npy" ] || node --input-type=module -e "
  const { loadImages } = await import('./dist/src/core/data/mnist.js');
  const { writeNpy } = await import('./dist/src/core/io/npy.js');
  const im = loadImages('train', { limit: $n });
  await writeNpy('$out/real.npy', { shape: [im.n, 1, im.h, im.w], data: im.data });"
files=("$out/real.npy")
for s in "${settings[@]}"; do
  name=${s%%|*}
  flags=${s#*|}
  if [ ! -f "$out/$name.npy" ]; then
    # shellcheck disable=SC2086  # flags are words
    sf sample --ckpt "$ckpt" $flags --n "$n" --seed 1 --out "$out/$name.npy" > /dev/null
  fi
  files+=("$out/$name.npy")
done
sf evaluate --classifier "$out/classifier.safetensors" --samples "${files[@]}" | tee "$out/eval.jsonl"
