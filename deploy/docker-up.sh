#!/usr/bin/env bash
# Makes sure a Docker engine is reachable and the static busybox (the test and demo
# images are built from it) is installed. As root it installs Debian's docker.io and
# busybox-static when missing and starts dockerd in the background (log:
# /var/log/drover-dockerd.log); otherwise it prints what to run and fails.
#
# It never starts a second engine: an engine that is starting or shutting down (its pid
# file names a live dockerd, or a dockerd process exists while the socket does not
# answer yet) is waited for, up to 60 s, and a new one is started only once none is
# left. Callers running at once (tests, the chaos suite's engine restarts) take a lock,
# so only one of them starts it. dockerd runs in its own session, so a signal to the
# caller's process group (a supervisor stopping deploy/dev.sh) does not stop it.
set -euo pipefail

sock=/var/run/docker.sock
pidfile=/var/run/docker.pid
lockfile=/var/run/drover-docker-up.lock
log=/var/log/drover-dockerd.log
settle_polls=300 # 0.2 s each: 60 s for an engine starting or shutting down
start_polls=150  # 30 s for the one started here to answer

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

answers() {
  docker version >/dev/null 2>&1
}

if [ -n "${DOCKER_HOST:-}" ] || answers; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: the Docker engine is not running; run: sudo systemctl start docker (or: sudo dockerd &)" >&2
  exit 1
fi

# The pids of running dockerd processes: the pid file's, when it names a live dockerd
# (a pid file left by a dead engine may name an unrelated process since), and any other
# dockerd (one shutting down may already have removed its pid file).
engine_pids() {
  local pid comm d
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && comm=$(cat "/proc/$pid/comm" 2>/dev/null) && [ "$comm" = dockerd ]; then
    echo "$pid"
  fi
  for d in /proc/[0-9]*; do
    comm=$(cat "$d/comm" 2>/dev/null || true)
    if [ "$comm" = dockerd ] && [ "${d#/proc/}" != "$pid" ]; then
      echo "${d#/proc/}"
    fi
  done
}

exec 9>"$lockfile"
if ! flock -w 90 9; then
  echo "error: another docker-up.sh has held $lockfile for 90 s" >&2
  exit 1
fi
# Whoever held the lock may have started it meanwhile; or one is starting or stopping.
for _ in $(seq 1 "$settle_polls"); do
  if answers; then
    exit 0
  fi
  if [ -z "$(engine_pids)" ]; then
    break
  fi
  sleep 0.2
done
pids=$(engine_pids | tr '\n' ' ')
if [ -n "$pids" ]; then
  if [ -S "$sock" ]; then what="its socket $sock does not answer"; else what="it has no socket $sock"; fi
  echo "error: dockerd (pid ${pids% }) has been running for 60 s but $what; see $log" >&2
  exit 1
fi

echo "starting dockerd" >&2
# No engine is left: its pid file and socket, if any, are stale.
rm -f "$pidfile"
setsid nohup dockerd >"$log" 2>&1 </dev/null 9>&- &
for _ in $(seq 1 "$start_polls"); do
  if [ -S "$sock" ] && answers; then
    exit 0
  fi
  sleep 0.2
done
echo "error: dockerd did not come up within 30 s; see $log" >&2
exit 1
