#!/usr/bin/env bash
# Builds the scoreflow image with podman where no image registry is reachable: first local
# stand-ins for the public bases deploy/docker/Dockerfile names, then the image itself.
#
#   bash scripts/container-bases.sh            stand-ins (if missing or stale), then the image
#   bash scripts/container-bases.sh --bases    only the stand-ins
#
# The stand-ins, made from Debian's own packages (mmdebstrap --variant=minbase bookworm, imported
# with podman import) plus this machine's Node (binary, headers, npm) in /usr/local as the real
# node images have them:
#   node:20-bookworm        + build-essential, python3, ca-certificates (what node-gyp needs; the
#                           real image, from buildpack-deps, has these and more)
#   node:20-bookworm-slim   Node and npm only
#   nats:2.10-alpine        the slim root with this machine's nats-server as its entrypoint (for the
#                           Kubernetes NATS container spec; not Alpine, the same flags)
# Each carries the label org.scoreflow.standin-key, a SHA-256 of everything it is made from (this
# script, the Node and nats-server binaries, the apt sources); one whose key matches is reused, so
# a second run takes seconds. With a registry, podman/docker pull the real images instead and none
# of this is needed. Apt inside the stand-ins (and so inside the image build) uses this machine's
# apt sources and its apt settings for proxies and snapshot mirrors.
#
# Then the image, with the command deploy/README.md gives for a TLS-inspecting proxy:
#   podman build -v /etc/ssl/certs:/etc/ssl/certs:ro \
#     --build-arg NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
#     -f deploy/docker/Dockerfile -t scoreflow .
# (the CA arguments only where /etc/ssl/certs/ca-certificates.crt exists). podman's layer cache
# makes an unchanged rebuild take seconds.
#
# Needs root, podman, runc and mmdebstrap (scripts/setup.sh installs them). Uses
# deploy/podman/containers.conf (runc, cgroupfs, rlimits) unless CONTAINERS_CONF is set.
# env: SCOREFLOW_IMAGE  the tag to build (default: scoreflow, i.e. localhost/scoreflow:latest)
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}
image=${SCOREFLOW_IMAGE:-scoreflow}
bases_only=0
case "${1:-}" in
  '') ;;
  --bases) bases_only=1 ;;
  *) echo "container-bases: unknown argument '$1' (usage: container-bases.sh [--bases])" >&2; exit 2 ;;
esac

die() { echo "container-bases: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (podman import and mmdebstrap's root mode)"
for c in podman mmdebstrap node nats-server; do
  command -v "$c" >/dev/null || die "$c not found (bash scripts/setup.sh installs it)"
done

node_bin=$(readlink -f "$(command -v node)")
node_prefix=$(dirname "$(dirname "$node_bin")")
node_headers=$node_prefix/include/node
npm_dir=$(npm root -g)/npm
nats_bin=$(readlink -f "$(command -v nats-server)")
[ -f "$node_headers/node_api.h" ] || die "no Node headers at $node_headers (node-gyp needs them)"
[ -f "$npm_dir/bin/npm-cli.js" ] || die "no npm at $npm_dir"

# The host's apt sources (so the stand-ins reach the same mirror) and its apt settings that matter
# for reaching it (proxies, snapshot mirrors' old Release files).
sources=()
[ -s /etc/apt/sources.list ] && sources+=(/etc/apt/sources.list)
for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -s "$f" ] && sources+=("$f")
done
aptconf=()
for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
  [ -f "$f" ] && grep -qiE 'proxy|check-valid-until|check-date' "$f" && aptconf+=("$f")
done

key=$( { cat "$0"; sha256sum "$node_bin" "$nats_bin"; cat "${sources[@]}" "${aptconf[@]}" /dev/null; } | sha256sum | cut -c1-16)
label=org.scoreflow.standin-key

current() { [ "$(podman image inspect --format "{{ index .Labels \"$label\" }}" "$1" 2>/dev/null)" = "$key" ]; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sf-bases.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# mmdebstrap hooks: this machine's Node in /usr/local (as the node images have it), apt settings.
node_hooks=(
  --customize-hook='mkdir -p "$1/usr/local/bin" "$1/usr/local/lib/node_modules" "$1/usr/local/include"'
  --customize-hook="copy-in $node_bin /usr/local/bin"
  --customize-hook="copy-in $npm_dir /usr/local/lib/node_modules"
  --customize-hook="copy-in $node_headers /usr/local/include"
  --customize-hook='ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/local/bin/npm"'
  --customize-hook='ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$1/usr/local/bin/npx"'
  --customize-hook='rm -rf "$1/var/lib/apt/lists/"* "$1/var/cache/apt/"*.bin'
)
for f in "${aptconf[@]}"; do node_hooks+=(--customize-hook="copy-in $f /etc/apt/apt.conf.d"); done

# name, extra packages
make_node_base() {
  local name=$1 include=$2 t0=$SECONDS
  if current "$name"; then echo "container-bases: $name is current (key $key)" >&2; return; fi
  echo "container-bases: making $name from Debian bookworm (minbase${include:+ + $include}) and Node $(node --version)..." >&2
  mmdebstrap --quiet --variant=minbase ${include:+--include="$include"} "${node_hooks[@]}" \
    bookworm "$tmp/root.tar" "${sources[@]}"
  podman import --quiet \
    --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD=["node"]' \
    --change "LABEL=$label=$key" \
    "$tmp/root.tar" "docker.io/library/$name" >/dev/null
  rm -f "$tmp/root.tar"
  echo "container-bases: $name made in $((SECONDS - t0)) s" >&2
}

make_node_base node:20-bookworm-slim ''
make_node_base node:20-bookworm build-essential,python3,ca-certificates

if ! current nats:2.10-alpine; then
  mkdir -p "$tmp/nats"
  cp "$nats_bin" "$tmp/nats/nats-server"
  cat > "$tmp/nats/Containerfile" <<EOF
FROM docker.io/library/node:20-bookworm-slim
COPY nats-server /usr/local/bin/nats-server
LABEL $label=$key
EXPOSE 4222 8222
ENTRYPOINT ["nats-server"]
EOF
  podman build --quiet -t docker.io/library/nats:2.10-alpine "$tmp/nats" >/dev/null
  echo "container-bases: nats:2.10-alpine made (nats-server $(nats-server --version | awk '{print $2}'))" >&2
else
  echo "container-bases: nats:2.10-alpine is current (key $key)" >&2
fi

[ "$bases_only" = 1 ] && exit 0

ca=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  ca=(-v /etc/ssl/certs:/etc/ssl/certs:ro --build-arg NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt)
fi
t0=$SECONDS
podman build "${ca[@]}" -f deploy/docker/Dockerfile -t "$image" . >&2
echo "container-bases: built $image in $((SECONDS - t0)) s: $(podman image inspect --format '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }')" >&2
