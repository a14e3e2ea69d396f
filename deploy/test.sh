#!/usr/bin/env bash
# Runs Drover's whole test suite: unit, property, storage-suite and integration tests
# (the integration tests start real `drover` processes on loopback ports, and the agent
# tests run real Docker containers from an image built here from the static busybox).
#
# Prerequisites are handled here: as root, a missing Docker engine (Debian's docker.io)
# and busybox-static are installed and dockerd is started when it is not running; as
# another user, the script says exactly what to run instead.
# Usage: deploy/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi

bash deploy/docker-up.sh

cargo build --workspace --all-targets --locked
cargo test --workspace --locked "$@"
