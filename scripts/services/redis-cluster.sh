#!/usr/bin/env bash
# A 6-node Redis Cluster (3 masters + 3 replicas) on 127.0.0.1:7000-7005
# for the integration tests.
#   start: reuse a healthy cluster on those ports; otherwise start the
#          nodes (state under .services/redis-cluster/), create the cluster
#          and wait until every master has a replica.
#   stop:  kill the nodes this script started and remove their state.
# Environment: REDIS_CLUSTER_BASE_PORT (default 7000; the cluster bus is
# each port + 10000, so keep the base below 22768) and REDIS_CLUSTER_DATA
# (default .services/redis-cluster), for private clusters such as the
# fault tests' (testkit::servers::PrivateRedisCluster).
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${REDIS_CLUSTER_BASE_PORT:-7000}
PORTS=()
for n in 0 1 2 3 4 5; do PORTS+=($((BASE + n))); done
STATE=${REDIS_CLUSTER_DATA:-$PWD/.services/redis-cluster}

cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }
# ok, every master has its replica (replicas attach after `create`), and
# no node is marked failed.
healthy() {
  local nodes
  cli "${PORTS[0]}" cluster info 2>/dev/null | grep -q "cluster_state:ok" &&
    nodes=$(cli "${PORTS[0]}" cluster nodes 2>/dev/null) &&
    [ "$(grep -c slave <<<"$nodes")" -eq 3 ] && ! grep -q fail <<<"$nodes"
}

start_node() {
  local port=$1 dir=$STATE/$1
  mkdir -p "$dir"
  cli "$port" ping 2>/dev/null | grep -q PONG && return
  redis-server --daemonize yes --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 2000 \
    --save "" --appendonly no --dir "$dir" --pidfile "$dir/redis.pid" \
    --logfile "$dir/redis.log"
}

start() {
  bash "$(dirname "$0")/redis.sh" install
  if healthy; then
    echo "redis-cluster: reusing the cluster on 127.0.0.1:${PORTS[0]}"
    return
  fi
  # Whatever answers on these ports is a broken leftover of an earlier run
  # (the ports are this cluster's): clear it so `create` starts clean.
  for port in "${PORTS[@]}"; do cli "$port" shutdown nosave >/dev/null 2>&1 || true; done
  rm -rf "$STATE"
  for port in "${PORTS[@]}"; do start_node "$port"; done
  for port in "${PORTS[@]}"; do
    for _ in $(seq 1 100); do cli "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  done
  if ! cli "${PORTS[0]}" cluster info | grep -q "cluster_known_nodes:6"; then
    local nodes=()
    for port in "${PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
  fi
  for _ in $(seq 1 300); do
    healthy && { echo "redis-cluster: ok on 127.0.0.1:${PORTS[0]}-${PORTS[5]}"; return; }
    sleep 0.1
  done
  echo "redis-cluster: cluster_state is not ok; see $STATE/*/redis.log" >&2
  exit 1
}

stop() {
  [ -d "$STATE" ] || { echo "redis-cluster: not started by this script; leaving it"; return; }
  for port in "${PORTS[@]}"; do
    local pidfile=$STATE/$port/redis.pid
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  # A node restarted by someone else may have another pid: any node still
  # answering whose data dir is ours is ours too.
  for port in "${PORTS[@]}"; do
    for _ in $(seq 1 50); do
      [ "$(cli "$port" config get dir 2>/dev/null | sed -n 2p)" = "$STATE/$port" ] || break
      cli "$port" shutdown nosave >/dev/null 2>&1 || true
      sleep 0.1
    done
  done
  rm -rf "$STATE"
  echo "redis-cluster: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
