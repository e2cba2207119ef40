#!/usr/bin/env bash
# Side by side on this machine: the same 2-worker training run (torch + gloo, the fast recipe on
# MNIST) as host processes and as podman containers on a podman network of their own, alternating,
# ROUNDS times each. Prints one line per run and a last line with the medians and their ratio.
#
#   bash scripts/container-bench.sh [STEPS] [ROUNDS]     (defaults: 300 steps, 5 rounds)
#
# host:       coordinator start --gpus 2 (its own nats-server, two spawned workers, 1 thread each)
# containers: nats-server, coordinator --no-spawn, two `worker start --threads 1`, one container
#             each, from the image scripts/container-bases.sh builds (SCOREFLOW_IMAGE, default
#             localhost/scoreflow:latest) and its nats stand-in.
# images/s = images of steps 21..STEPS-1 (0-based) over the time between the commits of steps 20 and
# STEPS-1 in train.jsonl
# (start-up, joining and the first steps left out). Needs root, podman and the built image.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}
steps=${1:-300}
rounds=${2:-5}
image=${SCOREFLOW_IMAGE:-localhost/scoreflow:latest}
[[ $steps =~ ^[0-9]+$ && $steps -ge 60 ]] || { echo "container-bench: STEPS must be a whole number >= 60, not '$steps'" >&2; exit 2; }
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "container-bench: ROUNDS must be a positive whole number, not '$rounds'" >&2; exit 2; }
podman image exists "$image" || { echo "container-bench: no image $image (bash scripts/container-bases.sh builds it)" >&2; exit 1; }
podman image exists docker.io/library/nats:2.10-alpine || { echo "container-bench: no nats image (bash scripts/container-bases.sh --bases makes it)" >&2; exit 1; }

flags=(--recipe fast --steps "$steps" --ckpt-every 100000)
id=$$
net=sf-bench-$id
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sf-bench.XXXXXX")
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
cleanup() {
  podman rm -f -t 0 "sf-bench-$id-nats" "sf-bench-$id-coord" "sf-bench-$id-w0" "sf-bench-$id-w1" >/dev/null 2>&1 || true
  podman network rm -f "$net" >/dev/null 2>&1 || true
  podman volume rm -f "sf-bench-$id" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# images/s of steps 21..last in a train.jsonl (steps are numbered from 0)
rate() {
  node -e '
    const rs = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map(JSON.parse);
    const batch = Number(process.argv[2]);
    const a = rs.find((r) => r.step === 20), b = rs.at(-1);
    if (!a || b.step !== Number(process.argv[3]) - 1) { console.error("container-bench: incomplete run: " + process.argv[1]); process.exit(1); }
    const s = (Date.parse(b.time) - Date.parse(a.time)) / 1000;
    console.log((batch * (b.step - a.step) / s).toFixed(1));
  ' "$1" 120 "$steps"
}

host_run() {
  local out=$tmp/host-$1
  node bin/coordinator.js start --gpus 2 --threads 1 --run "bench-host-$1" --out "$out" "${flags[@]}" > "$out.log" 2>&1 \
    || { echo "container-bench: host run failed:" >&2; tail -5 "$out.log" >&2; exit 1; }
  grep -q '^coordinator: gradients over gloo' "$out.log" || { echo "container-bench: the host run did not use gloo" >&2; exit 1; }
  rate "$out/train.jsonl"
}

container_run() {
  local r=$1 vol=sf-bench-$id
  podman network create "$net" >/dev/null
  podman volume create "$vol" >/dev/null
  local common=(-d --pull never --network "$net" -e "SCOREFLOW_NATS_TOKEN=$token")
  podman run "${common[@]}" --name "sf-bench-$id-nats" --network-alias nats docker.io/library/nats:2.10-alpine --auth "$token" >/dev/null
  podman run "${common[@]}" --name "sf-bench-$id-coord" -v "$vol:/out:U" "$image" /app/bin/coordinator.js start --no-spawn \
    --nats nats://nats:4222 --gpus 2 --run "bench-ct-$r" --out /out/run "${flags[@]}" >/dev/null
  for w in 0 1; do
    podman run "${common[@]}" --name "sf-bench-$id-w$w" --hostname "w$w" "$image" /app/bin/worker.js start \
      --nats nats://nats:4222 --run "bench-ct-$r" --threads 1 >/dev/null
  done
  local code
  code=$(podman wait "sf-bench-$id-coord")
  podman logs "sf-bench-$id-coord" > "$tmp/ct-$r.log" 2>&1
  [ "$code" = 0 ] || { echo "container-bench: container run failed ($code):" >&2; tail -5 "$tmp/ct-$r.log" >&2; exit 1; }
  grep -q '^coordinator: gradients over gloo' "$tmp/ct-$r.log" || { echo "container-bench: the container run did not use gloo" >&2; exit 1; }
  rate "$(podman volume inspect --format '{{.Mountpoint}}' "$vol")/run/train.jsonl"
  podman rm -f -t 0 "sf-bench-$id-nats" "sf-bench-$id-coord" "sf-bench-$id-w0" "sf-bench-$id-w1" >/dev/null
  podman network rm -f "$net" >/dev/null
  podman volume rm -f "$vol" >/dev/null
}

# The VM's timings drift by +-20% over minutes, so each round's ratio (containers over the host
# run just before them) is reported too: their median is the figure least moved by the drift.
host=() ct=() ratio=()
for r in $(seq 1 "$rounds"); do
  h=$(host_run "$r"); host+=("$h"); echo "container-bench: round $r host       $h images/s" >&2
  c=$(container_run "$r"); ct+=("$c"); echo "container-bench: round $r containers $c images/s" >&2
  ratio+=("$(awk -v a="$c" -v b="$h" 'BEGIN { printf "%.3f", a / b }')")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
mh=$(median "${host[@]}") mc=$(median "${ct[@]}")
echo "container-bench: $steps steps x $rounds rounds, 2 workers, torch + gloo: host ${mh} images/s, containers ${mc} images/s, ratio $(awk -v a="$mc" -v b="$mh" 'BEGIN { printf "%.3f", a / b }'); per round ${ratio[*]}, median $(median "${ratio[@]}")"
