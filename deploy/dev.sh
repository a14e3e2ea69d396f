#!/usr/bin/env bash
# Brings up a whole Drover fleet on this machine and runs the demo: makes sure the Docker
# engine runs (installing Debian's docker.io and busybox-static as root when missing, see
# docker-up.sh), builds the workspace, then runs `drover dev --demo`: a single-node control
# plane with its own certificates in ./.drover, an in-process agent, five demo tasks with
# their output. It keeps serving until Ctrl-C; `source .drover/env` in another shell points
# the CLI at it. Extra arguments go to `drover dev`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi

bash deploy/docker-up.sh
cargo build --workspace --locked
exec target/debug/drover dev --demo "$@"
