#!/usr/bin/env bash
# NATS with JetStream for the integration tests: a single server on
# 127.0.0.1:4222 (quick runs) and a three-node JetStream cluster (the HA
# layout: streams and consumers at replicas 3).
#   start:         both: reuse what already answers; else install
#                  nats-server (apt) if missing, start it in the background
#                  (logs, pids and data under .services/) and wait until it
#                  accepts connections (the cluster: until every node's
#                  JetStream is ready).
#   stop:          stop only what this script started.
#   cluster start|stop|kill N...|start-node N
#                  the cluster alone; kill is SIGKILL, as a crash would;
#                  start-node restarts node N (1-3) with its data.
# Cluster ports: node N serves clients on NATS_BASE_PORT+N-1 (default
# 22400), routes on +10, monitoring on +20. NATS_BASE_PORT and NATS_DATA
# (default .services/nats-cluster) give a private cluster, as the fault
# tests use.
set -euo pipefail
cd "$(dirname "$0")/../.."

# Some of these pids still run.
alive() {
  local pid
  for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done
  return 1
}

port=4222
dir=.services/nats
pidfile=$dir/pid
base=${NATS_BASE_PORT:-22400}
cluster_dir=${NATS_DATA:-$PWD/.services/nats-cluster}
name="nats cluster (base $base)"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

server() {
  if ! command -v nats-server >/dev/null && [[ ! -x /usr/sbin/nats-server ]]; then
    echo "nats: installing nats-server" >&2
    apt-get update -qq && apt-get install -y -qq nats-server >&2
  fi
  command -v nats-server || echo /usr/sbin/nats-server
}

start_single() {
  if listening "$port"; then
    echo "nats: reusing the server on 127.0.0.1:$port"
    return
  fi
  local binary
  binary=$(server)
  mkdir -p "$dir/data"
  nohup "$binary" -a 127.0.0.1 -p "$port" -js -sd "$dir/data" >"$dir/log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 100); do
    if listening "$port"; then
      echo "nats: started on 127.0.0.1:$port (pid $(cat "$pidfile"), log $dir/log)"
      return
    fi
    sleep 0.1
  done
  echo "nats: not answering on 127.0.0.1:$port after 10s; see $dir/log" >&2
  exit 1
}

stop_single() {
  if [[ -f $pidfile ]]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
    echo "nats: stopped"
  fi
}

client_port() { echo $((base + $1 - 1)); }
route_port() { echo $((base + 9 + $1)); }
monitor_port() { echo $((base + 19 + $1)); }

# Node N's JetStream is up and the cluster has a meta leader.
# (Plain bash HTTP: curl may not be on a fresh machine.)
ready() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$(monitor_port "$1")" &&
      printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 &&
      timeout 2 cat <&3 | grep -q '"ok"'
  ) 2>/dev/null
}

start_node() {
  local n=$1 binary routes=()
  listening "$(client_port "$n")" && return
  binary=$(server)
  for other in 1 2 3; do
    [ "$other" -eq "$n" ] || routes+=("nats://127.0.0.1:$(route_port "$other")")
  done
  mkdir -p "$cluster_dir/n$n"
  nohup "$binary" -a 127.0.0.1 -p "$(client_port "$n")" -m "$(monitor_port "$n")" -n "n$n" \
    -js -sd "$cluster_dir/n$n" --cluster_name switchyard \
    --cluster "nats://127.0.0.1:$(route_port "$n")" --routes "$(IFS=,; echo "${routes[*]}")" \
    >"$cluster_dir/n$n/log" 2>&1 &
  echo $! >"$cluster_dir/n$n/pid"
}

wait_ready() {
  for _ in $(seq 300); do
    local all=1
    for n in "$@"; do ready "$n" || all=0; done
    [ "$all" -eq 1 ] && return
    sleep 0.1
  done
  echo "$name: JetStream not ready on node(s) $* after 30s; see $cluster_dir/n*/log" >&2
  exit 1
}

start_cluster() {
  if [ ! -d "$cluster_dir" ] && listening "$(client_port 1)"; then
    echo "$name: reusing the cluster on $(client_port 1)-$(client_port 3)"
    return
  fi
  for n in 1 2 3; do start_node "$n"; done
  wait_ready 1 2 3
  echo "$name: started on 127.0.0.1:$(client_port 1)-$(client_port 3) (data $cluster_dir)"
}

stop_cluster() {
  [ -d "$cluster_dir" ] || return 0
  local pids=() pidfile
  for pidfile in "$cluster_dir"/n*/pid; do
    [ -f "$pidfile" ] && pids+=("$(cat "$pidfile")")
  done
  [ "${#pids[@]}" -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  # Gone before their data is: nothing left behind, nothing written after.
  for _ in $(seq 100); do
    alive "${pids[@]}" || break
    sleep 0.05
  done
  rm -rf "$cluster_dir"
  echo "$name: stopped"
}

kill_nodes() {
  local n pid
  for n in "$@"; do
    pid=$(cat "$cluster_dir/n$n/pid")
    kill -9 "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    echo "$name: node $n (port $(client_port "$n"), pid $pid) killed"
  done
}

case "${1:-} ${2:-}" in
"start "*) start_single; start_cluster ;;
"stop "*) stop_single; stop_cluster ;;
"cluster start") start_cluster ;;
"cluster stop") stop_cluster ;;
"cluster kill") shift 2; kill_nodes "$@" ;;
"cluster start-node") start_node "$3"; wait_ready "$3"; echo "$name: node $3 started on $(client_port "$3")" ;;
*)
  echo "usage: $0 start|stop|cluster start|stop|kill N...|start-node N" >&2
  exit 2
  ;;
esac
