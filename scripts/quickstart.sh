#!/usr/bin/env bash
# Quick start on a fresh Debian machine with Node 20: install what is needed, train the ScoreNet
# on MNIST with the fast recipe (4 epochs) on a 2-worker cluster (its own nats-server), draw 512 samples with
# the Heun sampler (99 network evaluations each) and score them with the MNIST classifier (trained
# once into runs/classifier.safetensors, reused after). Ends with one line: what the samples are worth.
# Outputs in runs/quickstart/; train on with:
#   node bin/coordinator.js start --gpus 2 --recipe fast --epochs N --out runs/quickstart
#
# Environment (all optional): QUICKSTART_EPOCHS (4), QUICKSTART_N samples (512), QUICKSTART_RUNS
# folder for the classifier and quickstart/ (runs), QUICKSTART_SETUP=0 skips scripts/setup.sh;
# CLASSIFIER_FLAGS, TRAIN_FLAGS, SAMPLE_FLAGS, EVALUATE_FLAGS are added to those commands' flags
# (later flags win), which is how test/scripts.test.ts runs this whole script in seconds.
# shellcheck disable=SC2086  # (file-wide) the *_FLAGS are words
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${QUICKSTART_SETUP:-1}" = 0 ] || bash scripts/setup.sh
runs=${QUICKSTART_RUNS:-runs}
out=$runs/quickstart
clf=$runs/classifier.safetensors
epochs=${QUICKSTART_EPOCHS:-4}
n=${QUICKSTART_N:-512}
t0=$(date +%s)
mkdir -p "$out"   # (file outputs need their folder to exist)
[ -f "$clf" ] || node bin/scoreflow.js classifier --epochs 2 --out "$clf" ${CLASSIFIER_FLAGS:-}
# restarted on the same --out, the coordinator resumes from the checkpoint there (and stops at once if it is done)
node bin/coordinator.js start --gpus 2 --recipe fast --epochs "$epochs" --out "$out" ${TRAIN_FLAGS:-}
node bin/scoreflow.js sample --ckpt "$out/checkpoint.safetensors" --sampler heun --n "$n" --seed 1 --out "$out/samples.npy" ${SAMPLE_FLAGS:-} > /dev/null
node bin/scoreflow.js evaluate --classifier "$clf" --samples "$out/samples.npy" --out "$out/metrics.json" ${EVALUATE_FLAGS:-} > /dev/null
node --input-type=module -e "
  import { readFileSync } from 'node:fs';
  const m = JSON.parse(readFileSync('$out/metrics.json', 'utf8'));
  const classes = m.class_counts.filter((c) => c > 0).length;
  console.log('quickstart: $out/samples.png: FD ' + m.fd.toFixed(1) + ' ($n Heun samples vs MNIST test; 512 real digits: 13.2), confidence ' +
    m.confidence.toFixed(3) + ', ' + classes + '/10 digits (fewest ' + Math.min(...m.class_counts) + '), ' + ($(date +%s) - $t0) + ' s after setup');
"
