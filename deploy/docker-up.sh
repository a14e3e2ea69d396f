#!/usr/bin/env bash
# Makes sure a Docker engine is reachable and the static busybox (the test and demo
# images are built from it) is installed. As root it installs Debian's docker.io and
# busybox-static when missing and starts dockerd in the background (log:
# /var/log/drover-dockerd.log); otherwise it prints what to run and fails.
set -euo pipefail

sock=/var/run/docker.sock
need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || need_pkgs+=(busybox-static)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing ${need_pkgs[*]}; run: sudo apt-get install -y ${need_pkgs[*]}" >&2
    exit 1
  fi
  echo "installing ${need_pkgs[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_pkgs[@]}" >/dev/null \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y "${need_pkgs[@]}" >/dev/null; }
fi

if [ -n "${DOCKER_HOST:-}" ] || docker version >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: the Docker engine is not running; run: sudo systemctl start docker (or: sudo dockerd &)" >&2
  exit 1
fi
# An engine still starting or shutting down holds its pid file: wait for it to settle
# instead of starting a second one (which would fail on that pid file).
pidfile=/var/run/docker.pid
for _ in $(seq 1 150); do
  if docker version >/dev/null 2>&1; then
    exit 0
  fi
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    break
  fi
  sleep 0.2
done
pid=$(cat "$pidfile" 2>/dev/null || true)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
  echo "error: dockerd (pid $pid) is running but has not answered for 30 s; see /var/log/drover-dockerd.log" >&2
  exit 1
fi
echo "starting dockerd" >&2
rm -f "$pidfile"
# Its own session: a signal to the caller's process group (a supervisor stopping
# deploy/dev.sh) does not stop the engine.
setsid nohup dockerd >/var/log/drover-dockerd.log 2>&1 < /dev/null &
for _ in $(seq 1 150); do
  if [ -S "$sock" ] && docker version >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.2
done
echo "error: dockerd did not come up within 30 s; see /var/log/drover-dockerd.log" >&2
exit 1
