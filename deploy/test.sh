#!/usr/bin/env bash
# Runs Drover's whole test suite: unit, property, storage-suite and integration tests
# (the integration tests start real `drover` processes on loopback ports).
# Usage: deploy/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi

cargo build --workspace --all-targets --locked
cargo test --workspace --locked "$@"
