#!/usr/bin/env bash
# Install what scoreflow and its tests need on Debian (bookworm) with Node 20:
# Debian packages only when missing, then `npm ci` (which also builds the TypeScript and,
# where libtorch is present, the torch addon). Run as root, or with sudo available.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nats-server >/dev/null || need+=(nats-server)                       # the cluster's broker
command -v prometheus >/dev/null && command -v promtool >/dev/null || need+=(prometheus)  # ops tests
[ -d /usr/include/torch ] || need+=(libtorch-dev)                              # the torch backend
[ -f /usr/include/gloo/config.h ] || need+=(libgloo-dev)                       # the addon's c10d Gloo groups
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)      # a second real data set
command -v protoc >/dev/null || need+=(protobuf-compiler)                      # a second protobuf decoder, for the wire tests
# the PyTorch reference, for the interchange tests and the bench (Debian's python3, not a pyenv one)
/usr/bin/python3 -c 'import torch, numpy, scipy' 2>/dev/null || need+=(python3-torch python3-numpy python3-scipy)
# containers: the image build and the container-cluster test (scripts/container-bases.sh,
# test/container-cluster.test.ts): podman with runc, its netavark network stack (which needs
# iptables) with aardvark-dns for names on the network, and mmdebstrap for the local base images
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/podman/netavark ] || [ -x /usr/libexec/podman/netavark ] || need+=(netavark)
[ -x /usr/lib/podman/aardvark-dns ] || [ -x /usr/libexec/podman/aardvark-dns ] || need+=(aardvark-dns)
command -v iptables >/dev/null || need+=(iptables)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

npm ci --no-audit --no-fund
