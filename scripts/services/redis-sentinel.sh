#!/usr/bin/env bash
# Redis with Sentinel on loopback: one master and two replicas (nodes 1-3 on
# BASE..BASE+2) and three sentinels (BASE+10..BASE+12) monitoring the
# service "switchyard" with quorum 2. Every node runs with
# min-replicas-to-write 1, so a master cut off from its replicas refuses
# writes instead of taking ones a failover would drop.
#   start:        reuse sentinels already answering for the service;
#                 otherwise install redis-server if missing, start what is
#                 not running and wait until the sentinels see both replicas.
#   stop:         stop only what this script started (pid files in DATA).
#   kill N...:    SIGKILL node N (1-3), as a crash would.
#   start-node N: start node N again from its config file (a failed-over
#                 master is then turned into a replica by the sentinels).
#   master:       print the port of the master the sentinels name.
# Environment: SENTINEL_BASE_PORT (default 22100), SENTINEL_DATA (default
# .services/redis-sentinel), SENTINEL_DOWN_AFTER (ms until a silent master
# is down, default 1000), for private deployments such as the fault tests'.
set -euo pipefail
cd "$(dirname "$0")/../.."

# Some of these pids still run.
alive() {
  local pid
  for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done
  return 1
}
BASE=${SENTINEL_BASE_PORT:-22100}
DATA=${SENTINEL_DATA:-$PWD/.services/redis-sentinel}
DOWN_AFTER=${SENTINEL_DOWN_AFTER:-1000}
SERVICE=switchyard
NAME="redis-sentinel (base $BASE)"

node_port() { echo $((BASE + $1 - 1)); }
sentinel_port() { echo $((BASE + 9 + $1)); }
ping() { redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG; }

master() {
  local port
  for n in 1 2 3; do
    port=$(redis-cli -h 127.0.0.1 -p "$(sentinel_port "$n")" SENTINEL get-master-addr-by-name "$SERVICE" 2>/dev/null | sed -n 2p)
    [ -n "$port" ] && { echo "$port"; return; }
  done
  return 1
}

start_node() {
  local n=$1 port
  port=$(node_port "$n")
  ping "$port" && return
  mkdir -p "$DATA/node-$n"
  if [ ! -f "$DATA/node-$n/redis.conf" ]; then
    {
      echo "port $port"
      echo "bind 127.0.0.1"
      echo "dir $DATA/node-$n"
      echo "pidfile $DATA/node-$n/redis.pid"
      echo "logfile $DATA/node-$n/redis.log"
      echo 'save ""'
      echo "appendonly no"
      echo "min-replicas-to-write 1"
      echo "min-replicas-max-lag 10"
      # A replica (re)joining syncs at once, not after the default 5 s.
      echo "repl-diskless-sync-delay 0"
      [ "$n" -eq 1 ] || echo "replicaof 127.0.0.1 $(node_port 1)"
    } >"$DATA/node-$n/redis.conf"
  fi
  redis-server "$DATA/node-$n/redis.conf" --daemonize yes
  for _ in $(seq 1 100); do
    ping "$port" && return
    sleep 0.1
  done
  echo "$NAME: node $n did not answer PING on $port; see $DATA/node-$n/redis.log" >&2
  exit 1
}

start_sentinel() {
  local n=$1 port
  port=$(sentinel_port "$n")
  ping "$port" && return
  mkdir -p "$DATA/sentinel-$n"
  # Sentinel rewrites its own config file as it learns the deployment.
  cat >"$DATA/sentinel-$n/sentinel.conf" <<EOF
port $port
bind 127.0.0.1
dir $DATA/sentinel-$n
pidfile $DATA/sentinel-$n/sentinel.pid
logfile $DATA/sentinel-$n/sentinel.log
daemonize yes
sentinel monitor $SERVICE 127.0.0.1 $(node_port 1) 2
sentinel down-after-milliseconds $SERVICE $DOWN_AFTER
sentinel failover-timeout $SERVICE 10000
sentinel parallel-syncs $SERVICE 2
EOF
  redis-server "$DATA/sentinel-$n/sentinel.conf" --sentinel
  for _ in $(seq 1 100); do
    ping "$port" && return
    sleep 0.1
  done
  echo "$NAME: sentinel $n did not answer on $port; see $DATA/sentinel-$n/sentinel.log" >&2
  exit 1
}

# Waits until the master has both replicas in sync and every sentinel
# names it, knowing both replicas and the two other sentinels.
wait_healthy() {
  local n port info
  for _ in $(seq 1 300); do
    local healthy=1
    port=$(master) || healthy=0
    [ "$healthy" -eq 1 ] && redis-cli -h 127.0.0.1 -p "$port" INFO replication 2>/dev/null |
      grep -c '^slave[0-9]*:.*state=online' | grep -q '^2$' || healthy=0
    for n in 1 2 3; do
      info=$(redis-cli -h 127.0.0.1 -p "$(sentinel_port "$n")" SENTINEL master "$SERVICE" 2>/dev/null | tr '\n' ' ')
      [[ $info == *"num-slaves 2 "* && $info == *"num-other-sentinels 2 "* && $info != *"_down"* ]] || healthy=0
    done
    [ "$healthy" -eq 1 ] && return
    sleep 0.1
  done
  echo "$NAME: the sentinels do not see a master with two replicas after 30s; see $DATA" >&2
  exit 1
}

start() {
  bash scripts/services/redis.sh install
  if [ ! -d "$DATA" ] && master >/dev/null; then
    echo "$NAME: reusing the sentinels on $(sentinel_port 1)-$(sentinel_port 3)"
    return
  fi
  local n running=0
  for n in 1 2 3; do
    ping "$(node_port "$n")" && running=1
    ping "$(sentinel_port "$n")" && running=1
  done
  # Nothing is kept (no persistence): a deployment found all down starts
  # afresh, not from configs the sentinels rewrote around a failover.
  [ "$running" -eq 1 ] || rm -rf "${DATA:?}"/node-* "${DATA:?}"/sentinel-*
  for n in 1 2 3; do start_node "$n"; done
  for n in 1 2 3; do start_sentinel "$n"; done
  wait_healthy
  echo "$NAME: master on $(master), replicas and sentinels $(sentinel_port 1)-$(sentinel_port 3) (service $SERVICE)"
}

stop() {
  [ -d "$DATA" ] || { echo "$NAME: not started by this script; leaving it"; return; }
  local pids=() pidfile
  for pidfile in "$DATA"/*/*.pid; do
    [ -f "$pidfile" ] && pids+=("$(cat "$pidfile")")
  done
  [ "${#pids[@]}" -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  # Gone before their directory is: nothing left behind, nothing written after.
  for _ in $(seq 100); do
    alive "${pids[@]}" || break
    sleep 0.05
  done
  rm -rf "$DATA"
  echo "$NAME: stopped"
}

kill_nodes() {
  local n pid
  for n in "$@"; do
    pid=$(cat "$DATA/node-$n/redis.pid")
    kill -9 "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    echo "$NAME: node $n (port $(node_port "$n"), pid $pid) killed"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  kill) shift; kill_nodes "$@" ;;
  start-node) start_node "$2"; echo "$NAME: node $2 started on $(node_port "$2")" ;;
  master) master ;;
  *) echo "usage: $0 start|stop|kill N...|start-node N|master" >&2; exit 2 ;;
esac
