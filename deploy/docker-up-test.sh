#!/usr/bin/env bash
# Tests deploy/docker-up.sh against a fake engine, never the real one: a copy of the
# script with its paths moved into a temporary directory, `dockerd` replaced by a fake
# (`fakedockerd`, a script that writes a pid file and a socket placeholder, then answers
# after a delay, or exits without answering, as an engine shutting down does) and
# `docker` by one that answers while the fake does. Cases: nothing running (one engine
# started, in its own session); two callers at once (one engine); an engine still
# starting (waited for, none started); a pid file naming a live process that is not
# dockerd (stale: one started); an engine shutting down (waited for, then one started).
# Runs as any user, in about 10 s.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
S="$(mktemp -d)"
mkdir -p "$S/bin"

cat >"$S/bin/docker" <<EOF
#!/usr/bin/env bash
[ -e "$S/answering" ]
EOF
# Through /usr/bin/env the process would be named `bash`; the script finds engines by
# process name, so the fake starts its interpreter directly.
cat >"$S/bin/fakedockerd" <<EOF
#!/bin/bash
# MODE=start (default): answer after DELAY s and keep running; MODE=stop: never answer,
# exit after DELAY s.
echo \$\$ >>"$S/starts"
echo \$\$ >"$S/docker.pid"
: >"$S/docker.sock"
sleep "\${DELAY:-0.5}"
if [ "\${MODE:-start}" = stop ]; then
  rm -f "$S/docker.pid"
  exit 0
fi
touch "$S/answering"
exec sleep 300
EOF
chmod +x "$S/bin/docker" "$S/bin/fakedockerd"
sed -e "s|/var/run/docker.sock|$S/docker.sock|" \
  -e "s|/var/run/docker.pid|$S/docker.pid|" \
  -e "s|/var/run/drover-docker-up.lock|$S/lock|" \
  -e "s|/var/log/drover-dockerd.log|$S/dockerd.log|" \
  -e "s|= dockerd|= fakedockerd|g" \
  -e "s|setsid nohup dockerd|setsid nohup fakedockerd|" \
  -e "s|-S \"\$sock\"|-e \"\$sock\"|g" \
  -e 's|"$(id -u)" -ne 0|"0" -ne 0|g' \
  "$here/docker-up.sh" >"$S/up.sh"
for must in "$S/docker.pid" "$S/lock" "= fakedockerd" "setsid nohup fakedockerd"; do
  grep -qF -- "$must" "$S/up.sh" || { echo "FAIL: docker-up.sh changed shape: no '$must' after rewriting" >&2; exit 1; }
done
export PATH="$S/bin:$PATH"
unset DOCKER_HOST

others=() # processes this test started outside the fake engine
reset() {
  local p
  for p in $(cat "$S/starts" 2>/dev/null) "${others[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  others=()
  rm -f "$S/answering" "$S/docker.pid" "$S/docker.sock" "$S/starts"
}
trap 'reset; rm -rf "$S"' EXIT

starts() { if [ -e "$S/starts" ]; then wc -l <"$S/starts"; else echo 0; fi; }
check() { # what, expected starts
  if [ "$(starts)" != "$2" ]; then
    echo "FAIL: $1: $(starts) engines started, expected $2" >&2
    exit 1
  fi
  echo "ok: $1"
}

reset
bash "$S/up.sh" 2>/dev/null
check "nothing running: one engine started" 1
engine=$(head -1 "$S/starts")
if [ "$(ps -o sid= -p "$engine" | tr -d ' ')" = "$(ps -o sid= -p $$ | tr -d ' ')" ]; then
  echo "FAIL: the engine runs in the caller's session" >&2
  exit 1
fi
echo "ok: the engine runs in a session of its own"

reset
bash "$S/up.sh" 2>/dev/null &
first=$!
bash "$S/up.sh" 2>/dev/null
wait "$first"
check "two callers at once: one engine started" 1

reset
DELAY=2 setsid fakedockerd >/dev/null 2>&1 </dev/null &
for _ in $(seq 1 50); do [ -e "$S/docker.pid" ] && break; sleep 0.1; done
bash "$S/up.sh" 2>/dev/null
check "an engine still starting: waited for, no second one" 1

reset
sleep 300 &
others+=($!)
echo "$!" >"$S/docker.pid"
: >"$S/docker.sock"
bash "$S/up.sh" 2>/dev/null
check "a pid file naming a live process that is not dockerd: an engine started" 1

reset
MODE=stop DELAY=2 setsid fakedockerd >/dev/null 2>&1 </dev/null &
for _ in $(seq 1 50); do [ -e "$S/docker.pid" ] && break; sleep 0.1; done
bash "$S/up.sh" 2>/dev/null
check "an engine shutting down: waited for, then one started" 2
