#!/usr/bin/env bash
# A whole fleet on this machine, the way it runs on real hosts: three `drover server`
# nodes with mutual TLS, two `drover agent`s, a CA and role certificates, a tenant.
#
#   deploy/local-cluster.sh up [DIR]       start it (DIR: ./.drover-local by default)
#   deploy/local-cluster.sh status [DIR]   which processes run, and Raft's view
#   deploy/local-cluster.sh down [DIR]     SIGTERM everything (data and certificates stay)
#
# `up` writes DIR/env (the tenant `demo`) and DIR/env.operator with the CLI's `export`
# lines: `source DIR/env` and `drover task queue ...` works.
# Environment:
#   DROVER_BIN          the drover binary (default: `drover` on PATH, else target/{release,debug}/drover)
#   DROVER_LOCAL_PORTS  six loopback ports, comma-separated: gRPC and HTTP of nodes 1, 2, 3
#                       (default 7400,7401,7410,7411,7420,7421)
#   DROVER_LOCAL_AGENT_ATTRS  TOML lines appended to each agent's config (default: none)
# The agents need a running Docker engine (deploy/docker-up.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

cmd=${1:-}
dir=$(realpath -m "${2:-.drover-local}")

bin=${DROVER_BIN:-}
if [[ -z $bin ]]; then
  if command -v drover >/dev/null 2>&1; then bin=$(command -v drover)
  elif [[ -x target/release/drover ]]; then bin=$PWD/target/release/drover
  elif [[ -x target/debug/drover ]]; then bin=$PWD/target/debug/drover
  else echo "error: no drover binary: build it (cargo build --release) or set DROVER_BIN" >&2; exit 1
  fi
fi

IFS=, read -r -a ports <<<"${DROVER_LOCAL_PORTS:-7400,7401,7410,7411,7420,7421}"
if [[ ${#ports[@]} -ne 6 ]]; then
  echo "error: DROVER_LOCAL_PORTS needs six ports, got '${DROVER_LOCAL_PORTS:-}'" >&2
  exit 1
fi
grpc() { echo "127.0.0.1:${ports[$((($1 - 1) * 2))]}"; }
http() { echo "127.0.0.1:${ports[$((($1 - 1) * 2 + 1))]}"; }
addrs() { echo "$(grpc 1),$(grpc 2),$(grpc 3)"; }

# Starts a process detached from this shell (its own session), logging to DIR/NAME.log.
start() {
  local name=$1
  shift
  setsid "$@" >"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}

alive() { [[ -f "$dir/$1.pid" ]] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

# Writes FILE with the CLI's `export` lines for the certificate pair pki/ID.pem/.key.
write_env() {
  cat >"$1" <<EOF
export DROVER_ADDR=$(addrs)
export DROVER_CA=$dir/pki/ca.pem
export DROVER_CERT=$dir/pki/$2.pem
export DROVER_KEY=$dir/pki/$2.key
EOF
}

up() {
  mkdir -p "$dir/pki"
  local pki=$dir/pki
  if [[ ! -f $pki/ca.pem ]]; then
    "$bin" certs init --dir "$pki" >/dev/null
    for i in 1 2 3; do "$bin" certs issue --dir "$pki" --role server --id "$i" --ip 127.0.0.1 >/dev/null; done
    for i in 1 2; do "$bin" certs issue --dir "$pki" --role agent --id "local-$i" >/dev/null; done
    "$bin" certs issue --dir "$pki" --role operator --id local >/dev/null
    "$bin" certs issue --dir "$pki" --role tenant --id demo >/dev/null
  fi
  local members="initial_members = { 1 = \"$(grpc 1)\", 2 = \"$(grpc 2)\", 3 = \"$(grpc 3)\" }"
  for i in 1 2 3; do
    if alive "server-$i"; then continue; fi
    mkdir -p "$dir/server-$i"
    cat >"$dir/server-$i.toml" <<EOF
node_id = $i
listen = "$(grpc "$i")"
http_listen = "$(http "$i")"
data_dir = "$dir/server-$i"
$members
tls = { ca = "$pki/ca.pem", cert = "$pki/server-$i.pem", key = "$pki/server-$i.key" }
EOF
    start "server-$i" "$bin" server --config "$dir/server-$i.toml"
  done
  local ops=(--addr "$(addrs)" --ca "$pki/ca.pem" --cert "$pki/operator-local.pem" --key "$pki/operator-local.key")
  # The first write waits for a leader that can commit (a restart on existing data may
  # still be electing): retried for up to 30 s; creating the tenant again changes nothing.
  local created=""
  for _ in $(seq 1 60); do
    if "$bin" tenant create demo "${ops[@]}" >/dev/null 2>"$dir/tenant-create.err"; then created=1; break; fi
    sleep 0.5
  done
  if [[ -z $created ]]; then
    echo "error: creating tenant demo: $(cat "$dir/tenant-create.err"); see $dir/server-*.log" >&2
    return 1
  fi
  local cp="[\"$(grpc 1)\", \"$(grpc 2)\", \"$(grpc 3)\"]"
  for i in 1 2; do
    if alive "agent-$i"; then continue; fi
    mkdir -p "$dir/agent-$i"
    cat >"$dir/agent-$i.toml" <<EOF
control_plane = $cp
data_dir = "$dir/agent-$i"
tls = { ca = "$pki/ca.pem", cert = "$pki/agent-local-$i.pem", key = "$pki/agent-local-$i.key" }
${DROVER_LOCAL_AGENT_ATTRS:-}
EOF
    start "agent-$i" "$bin" agent run --config "$dir/agent-$i.toml"
  done
  write_env "$dir/env" tenant-demo
  write_env "$dir/env.operator" operator-local
  echo "fleet up in $dir: 3 servers ($(addrs)), 2 agents"
  echo "tenant demo:  source $dir/env"
  echo "operator:     source $dir/env.operator"
}

status() {
  for p in server-1 server-2 server-3 agent-1 agent-2; do
    if alive "$p"; then echo "$p running (pid $(cat "$dir/$p.pid"))"; else echo "$p stopped"; fi
  done
  if [[ -f $dir/env.operator ]]; then
    (source "$dir/env.operator" && "$bin" operator raft status) || true
  fi
}

down() {
  local pids=()
  for p in agent-1 agent-2 server-1 server-2 server-3; do
    if alive "$p"; then
      pids+=("$(cat "$dir/$p.pid")")
      kill -TERM "$(cat "$dir/$p.pid")"
    fi
    rm -f "$dir/$p.pid"
  done
  # Agents drain (up to their drain grace, 60 s by default); then anything left is killed.
  for _ in $(seq 1 140); do
    local left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [[ $left -eq 0 ]] && break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  echo "fleet down (data and certificates kept in $dir)"
}

case $cmd in
  up) up ;;
  status) status ;;
  down) down ;;
  *) echo "usage: $0 up|status|down [DIR]" >&2; exit 2 ;;
esac
