#!/usr/bin/env bash
# Sample quality (and optionally bits/dim) against training time for each training recipe: one run
# per recipe, continued with --resume to each epoch count; at each, 512 Heun samples (defaults, 99
# NFE, seed 1) scored by `scoreflow evaluate` (FD of classifier features vs the MNIST test set,
# confidence, classes) and, with BPD_N > 0, `scoreflow likelihood` on the first BPD_N test images.
#
#   bash scripts/recipe-sweep.sh [OUT] [EPOCHS] [RECIPES] [N] [BPD_N]
#     OUT      runs/recipe-sweep          EPOCHS "1 2 3 5"     RECIPES "seed fast"     N 512     BPD_N 0 (none)
#   e.g. bash scripts/recipe-sweep.sh runs/recipe-sweep "1 2"   (what fits a busy afternoon)
#        bash scripts/recipe-sweep.sh runs/lik "1 3 10" "seed fast likelihood" 512 10000   (README: the likelihood figures)
#
# Training runs single-process (`scoreflow train --backend torch`, all cores; TRAIN_FLAGS adds
# flags). Training time is the sum of the per-step seconds in OUT/RECIPE/log.jsonl up to that
# epoch (compute only: no start-up, sampling or checkpoint writes). Finished points are reused,
# so the sweep can be stopped and continued. The classifier is runs/classifier.safetensors
# (trained once if missing). Each point's row is OUT/RECIPE/epE.row.json; all rows under OUT go to
# OUT/sweep.jsonl and the table printed at the end (run one recipe per process to go in parallel).
# SWEEP_CLASSIFIER puts the classifier elsewhere; CLASSIFIER_FLAGS, SAMPLE_FLAGS and EVALUATE_FLAGS
# and LIKELIHOOD_FLAGS are added to those commands like TRAIN_FLAGS (test/scripts.test.ts runs a tiny sweep with them).
# shellcheck disable=SC2086  # (file-wide) the *_FLAGS are words
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/recipe-sweep}
epochs=${2:-1 2 3 5}
recipes=${3:-seed fast}
n=${4:-512}
bpd_n=${5:-0}
clf=${SWEEP_CLASSIFIER:-runs/classifier.safetensors}
sf() { node bin/scoreflow.js "$@"; }
mkdir -p "$out" "$(dirname "$clf")"
[ -f "$clf" ] || sf classifier --epochs 2 --out "$clf" ${CLASSIFIER_FLAGS:-}

for r in $recipes; do
  dir=$out/$r
  for e in $epochs; do
    point=$dir/ep$e
    if [ ! -f "$point.eval.json" ]; then
      if [ ! -f "$point.safetensors" ]; then
        resume=()
        [ -f "$dir/checkpoint.safetensors" ] && resume=(--resume)
        sf train --recipe "$r" --epochs "$e" --backend torch --out "$dir" --ckpt-every 100000 "${resume[@]}" ${TRAIN_FLAGS:-}
        cp "$dir/checkpoint.safetensors" "$point.safetensors.tmp" && mv "$point.safetensors.tmp" "$point.safetensors"  # atomic: a killed copy is never a point
      fi
      sf sample --ckpt "$point.safetensors" --sampler heun --n "$n" --seed 1 --out "$point.npy" ${SAMPLE_FLAGS:-} > /dev/null
      sf evaluate --classifier "$clf" --samples "$point.npy" --out "$point.eval.json" ${EVALUATE_FLAGS:-} > /dev/null
    fi
    if [ "$bpd_n" -gt 0 ] && [ ! -f "$point.bpd$bpd_n.json" ]; then
      sf likelihood --ckpt "$point.safetensors" --split test --limit "$bpd_n" --out "$point.bpd$bpd_n.json" ${LIKELIHOOD_FLAGS:-} > /dev/null
    fi
    node --input-type=module -e "
      import { readFileSync } from 'node:fs';
      const m = JSON.parse(readFileSync('$point.eval.json', 'utf8'));
      const meta = JSON.parse(readFileSync('$point.json', 'utf8'));
      const log = readFileSync('$dir/log.jsonl', 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      const last = log.filter((l) => l.epoch < $e);
      const steps = last.length ? last[last.length - 1].step : 0;
      const seconds = last.reduce((s, l) => s + l.seconds, 0);
      const classes = m.class_counts.filter((c) => c > 0).length;
      const l = $bpd_n > 0 ? JSON.parse(readFileSync('$point.bpd$bpd_n.json', 'utf8')) : null;
      console.log(JSON.stringify({ recipe: '$r', epochs: $e, steps, train_s: Math.round(seconds), fd: m.fd, confidence: m.confidence,
        classes, min_class: Math.min(...m.class_counts), class_entropy: m.class_entropy, speckle: m.speckle, hist_tv: m.hist_tv, samples: $n, nfe: meta.nfe,
        ...(l ? { bpd: l.bpd, bpd_stderr: l.bpd_stderr, bpd_n: l.n } : {}) }));
    " > "$point.row.json"
  done
done
# every finished point under OUT, in recipe then epoch order (so runs of one recipe each can go in parallel)
node --input-type=module -e "
  import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
  const rows = [];
  for (const r of readdirSync('$out', { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name)) {
    for (const f of readdirSync('$out/' + r).filter((f) => f.endsWith('.row.json'))) rows.push(JSON.parse(readFileSync('$out/' + r + '/' + f, 'utf8')));
  }
  rows.sort((a, b) => a.recipe.localeCompare(b.recipe) || a.epochs - b.epochs);
  writeFileSync('$out/sweep.jsonl', rows.map((r) => JSON.stringify(r) + '\n').join(''));
  const bpd = rows.some((r) => r.bpd !== undefined);
  console.log('| recipe | epochs | steps | train s | FD (' + rows[0].samples + ') | confidence | classes (fewest) | class entropy | speckle | hist TV |' + (bpd ? ' bits/dim (test images) |' : ''));
  console.log('|---|---|---|---|---|---|---|---|---|---|' + (bpd ? '---|' : ''));
  for (const r of rows) console.log('| ' + [r.recipe, r.epochs, r.steps, r.train_s, r.fd.toFixed(1), r.confidence.toFixed(3), r.classes + '/10 (' + r.min_class + ')',
    r.class_entropy.toFixed(3), r.speckle.toFixed(3), r.hist_tv.toFixed(3)].concat(bpd ? [r.bpd === undefined ? '–' : r.bpd.toFixed(3) + ' ± ' + r.bpd_stderr.toFixed(3) + ' (' + r.bpd_n + ')'] : []).join(' | ') + ' |');
"
