#!/usr/bin/env bash
# Quick start on a fresh Debian machine with Node 20: install what is needed, train the reference
# ScoreNet for one MNIST epoch on a 2-worker cluster (its own nats-server), then draw 64 samples
# with the predictor-corrector sampler.
# Outputs in runs/quickstart/; train on with: node bin/coordinator.js start --gpus 2 --epochs N --out runs/quickstart
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=runs/quickstart
node bin/coordinator.js start --gpus 2 --epochs 1 --out "$out"
node bin/scoreflow.js sample --ckpt "$out/checkpoint.safetensors" --sampler pc --n 64 --out "$out/samples.npy"
echo "quickstart: samples in $out/samples.png (and .npy, .json); checkpoint $out/checkpoint.safetensors" >&2
