#!/usr/bin/env bash
# Side-by-side baseline for `drover-bench queue`: puts per second into a 3-node etcd
# cluster on loopback, on the same machine, with the same concurrency and value size.
# Needs Debian's etcd-server and wrk (apt-get install -y etcd-server wrk).
# Usage: deploy/bench-etcd.sh [connections=64] [seconds=10] [value_bytes=1024]
set -euo pipefail
conns=${1:-64}; secs=${2:-10}; vbytes=${3:-1024}
command -v etcd >/dev/null && command -v etcdctl >/dev/null && command -v wrk >/dev/null || { echo "needs etcd, etcdctl and wrk: apt-get install -y etcd-server etcd-client wrk" >&2; exit 1; }
dir=$(mktemp -d /tmp/drover-etcd-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A client peer
cluster=""
for i in 1 2 3; do client[$i]=$(port); peer[$i]=$(port); cluster+="${cluster:+,}e$i=http://127.0.0.1:${peer[$i]}"; done
for i in 1 2 3; do
  etcd --name e$i --data-dir "$dir/e$i" \
    --listen-client-urls http://127.0.0.1:${client[$i]} --advertise-client-urls http://127.0.0.1:${client[$i]} \
    --listen-peer-urls http://127.0.0.1:${peer[$i]} --initial-advertise-peer-urls http://127.0.0.1:${peer[$i]} \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level error >"$dir/e$i.log" 2>&1 &
  pids+=($!)
done
eps="127.0.0.1:${client[1]},127.0.0.1:${client[2]},127.0.0.1:${client[3]}"
for _ in $(seq 100); do ETCDCTL_API=3 etcdctl --endpoints "$eps" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
leader=$(ETCDCTL_API=3 etcdctl --endpoints "$eps" endpoint status -w json | python3 -c 'import json,sys; d=json.load(sys.stdin); print([s["Endpoint"] for s in d if s["Status"]["leader"]==s["Status"]["header"]["member_id"]][0])')
value=$(head -c "$vbytes" /dev/zero | tr '\0' x | base64 -w0)
cat > "$dir/put.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
-- every put is a full replicated write; the key ("key", base64) is the same each time
request = function()
  return wrk.format(nil, "/v3/kv/put", nil, '{"key":"a2V5","value":"$value"}')
end
LUA
echo "etcd 3.4 (Debian), 3 members on loopback, leader $leader, $conns connections, ${vbytes} B values, ${secs}s"
wrk -t 2 -c "$conns" -d "${secs}s" --latency -s "$dir/put.lua" "http://$leader" | grep -E "Requests/sec|50%|99%|Non-2xx|requests in"
