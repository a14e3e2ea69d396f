#!/usr/bin/env bash
# Side-by-side baseline for `drover-bench queue`: puts per second into a 3-node etcd
# cluster on loopback, on the same machine, with the same concurrency and value size.
# Needs Debian's etcd-server and wrk (apt-get install -y etcd-server wrk).
# Usage: deploy/bench-etcd.sh [connections=64] [seconds=10] [value_bytes=1024]
#        deploy/bench-etcd.sh check-perf [load=l]   (etcd's own `etcdctl check perf`:
#        60 s of puts from its gRPC client at the load's target rate and client count)
set -euo pipefail
check_load=""
if [ "${1:-}" = check-perf ]; then check_load=${2:-l}; set --; fi
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
if [ -n "$check_load" ]; then
  echo "etcd 3.4 (Debian), 3 members on loopback, leader $leader: etcdctl check perf --load $check_load"
  ETCDCTL_API=3 etcdctl --endpoints "$eps" check perf --load "$check_load" 2>&1 | tr '\r' '\n' | grep -v "^ *[0-9]* / [0-9]*" || true
  exit 0
fi
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
# CPU accounting, as drover-bench queue prints it: each member's CPU per 1,000 puts
# (utime+stime from /proc, in clock ticks of 10 ms), the load generator's and how busy
# the machine was.
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
machine() { awk '/^cpu /{t=$2+$3+$4+$5+$6+$7+$8+$9; print t-$5-$6, t}' /proc/stat; }
declare -A cpu0
for i in 1 2 3; do cpu0[$i]=$(ticks "${pids[$((i-1))]}"); done
read -r busy0 total0 < <(machine)
python3 -c '
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stdout.write(p.stdout)
sys.stderr.write(p.stderr)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("client-cpu-seconds %.3f" % (r.ru_utime + r.ru_stime))
sys.exit(p.returncode)
' wrk -t 2 -c "$conns" -d "${secs}s" --latency -s "$dir/put.lua" "http://$leader" > "$dir/wrk.out"
read -r busy1 total1 < <(machine)
grep -E "Requests/sec|50%|99%|Non-2xx|requests in" "$dir/wrk.out"
# Successful puts: every request wrk made less those answered with an error status.
puts=$(awk '/requests in/{n=$1} /Non-2xx/{bad=$NF} END{print n-bad}' "$dir/wrk.out")
[ "${puts:-0}" -gt 0 ] || { echo "no put succeeded" >&2; exit 1; }
line="CPU per 1,000 puts:"
for i in 1 2 3; do
  mark=""; [ "127.0.0.1:${client[$i]}" = "$leader" ] && mark=" (leader)"
  line+=" e$i$mark $(( ( $(ticks "${pids[$((i-1))]}") - ${cpu0[$i]} ) * 10 * 1000 / puts )) ms,"
done
client_ms=$(awk -v n="$puts" '/client-cpu-seconds/{printf "%.0f", $2*1000*1000/n}' "$dir/wrk.out")
echo "$line wrk $client_ms ms; machine $(( 100 * (busy1 - busy0) / (total1 - total0) )) % busy"
