#!/usr/bin/env bash
# Checks the Prometheus config, the alert rules and the rules' unit tests with promtool:
#   promtool check config prometheus.yml   (on a copy: the operator certificate files it
#                                           names must exist, so placeholders stand in)
#   promtool check rules alerts.yml
#   promtool test rules alerts_test.yml
# As root, installs Debian's `prometheus` package (which provides promtool) when promtool
# is missing; as another user it says what to run. Takes a few seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: promtool not found; run: sudo apt-get install -y prometheus" >&2
    exit 1
  fi
  echo "installing prometheus (for promtool)" >&2
  # Only promtool is wanted: a policy-rc.d that refuses (exit 101, Debian's convention)
  # keeps the package from starting a Prometheus server that would hold port 9090.
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null \
    || { apt-get update >/dev/null \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null; } \
    || rc=$?
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
  [ "$rc" -eq 0 ] || exit "$rc"
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp -r "$here/." "$stage/"
mkdir -p "$stage/pki"
for f in ca.pem operator-prometheus.pem operator-prometheus.key; do
  [ -e "$stage/pki/$f" ] || : >"$stage/pki/$f"
done
promtool check config "$stage/prometheus.yml"
promtool check rules "$here/alerts.yml"
promtool test rules "$here/alerts_test.yml"
