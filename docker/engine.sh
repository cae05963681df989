#!/usr/bin/env bash
# Start (or stop) a Docker engine for the tests on a machine with no image registry:
#   source docker/engine.sh start   -> exports DOCKER_HOST and BYOL_DOCKER_BASE
#   docker/engine.sh stop
# The engine runs without touching the host network (no iptables, no bridge); the base image is a
# Debian bookworm made with debootstrap from the apt mirror this machine already uses.
ROOT=${BYOL_DOCKER_ROOT:-/tmp/byol-docker}
SOCK="$ROOT/docker.sock"
BASE_TAG=local/python:3.11-bookworm

start() {
  if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v docker-compose >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap docker-compose) \
      >"$ROOT.apt.log" 2>&1 || { echo "engine: could not install docker.io/debootstrap (see $ROOT.apt.log)"; return 1; }
  fi
  mkdir -p "$ROOT"
  if ! DOCKER_HOST="unix://$SOCK" docker info >/dev/null 2>&1; then
    nohup dockerd --iptables=false --ip-forward=false --bridge=none --data-root "$ROOT/data" \
      --exec-root "$ROOT/exec" --pidfile "$ROOT/docker.pid" --host "unix://$SOCK" >"$ROOT/dockerd.log" 2>&1 &
    for _ in $(seq 60); do DOCKER_HOST="unix://$SOCK" docker info >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  export DOCKER_HOST="unix://$SOCK"
  docker info >/dev/null 2>&1 || { echo "engine: dockerd did not start (see $ROOT/dockerd.log)"; return 1; }
  if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    # the mirror this machine's apt already uses (deb822 "URIs:" lines or classic "deb URL" lines)
    mirror=$( (grep -hE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
               grep -hE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                 | awk '{print $2}') | grep -v security | grep debian | head -n1)
    rootfs="$ROOT/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$rootfs" \
      "${mirror:-http://deb.debian.org/debian}" >"$ROOT/debootstrap.log" 2>&1 \
      || { echo "engine: debootstrap failed (see $ROOT/debootstrap.log)"; return 1; }
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc \
      "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
    tar -C "$rootfs" -c . | docker import - "$BASE_TAG" >/dev/null
    rm -rf "$rootfs"
  fi
  export BYOL_DOCKER_BASE="$BASE_TAG"
  echo "engine: ready at $DOCKER_HOST with base image $BASE_TAG"
}

stop() {
  if [ -f "$ROOT/docker.pid" ]; then
    kill "$(cat "$ROOT/docker.pid")" 2>/dev/null
    for _ in $(seq 40); do [ -f "$ROOT/docker.pid" ] || break; sleep 0.5; done
  fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
esac
