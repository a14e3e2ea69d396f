#!/usr/bin/env bash
# Builds the container image of deploy/container/Dockerfile: drover:<version> and
# drover:latest.
#   deploy/container/build.sh [--binary PATH] [--base IMAGE] [--tag NAME]
# --binary  a drover binary already built (default: cargo build --release, then
#           target/release/drover)
# --base    the base image (default debian:bookworm-slim; must have the build host's
#           glibc or newer)
# --tag     the image name (default drover)
set -euo pipefail
cd "$(dirname "$0")/../.."
binary="" base="debian:bookworm-slim" tag="drover"
while [[ $# -gt 0 ]]; do
  case $1 in
    --binary) binary=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--base IMAGE] [--tag NAME]" >&2; exit 2 ;;
  esac
done
if [[ -z $binary ]]; then
  cargo build --workspace --release --locked
  binary=target/release/drover
fi
version=$("$binary" --version | awk '{print $2}')
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp deploy/container/Dockerfile "$ctx/"
mkdir "$ctx/data"
cp "$binary" "$ctx/drover"
docker build --quiet --build-arg "BASE=$base" -t "$tag:$version" -t "$tag:latest" "$ctx" >/dev/null
echo "$tag:$version"
