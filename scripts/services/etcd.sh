#!/usr/bin/env bash
# A single-member etcd v3 on 127.0.0.1:2379 (client) / 2380 (peer) for the
# etcd registry tests (tests/it/stores/mod.rs `etcd::*`, docs/ETCD.md).
#   start: reuse an etcd that reports healthy there; otherwise install
#          etcd-server if missing and start one (data under .services/etcd).
#   stop:  stop only the etcd this script started (pid in .services/).
#   install: only install etcd-server if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIENT_PORT=2379
PEER_PORT=2380
STATE=.services/etcd
PIDFILE=$STATE/etcd.pid

healthy() { curl -fsS "http://127.0.0.1:$CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"'; }

install() {
  command -v etcd >/dev/null && return
  echo "etcd: installing etcd-server"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq etcd-server >/dev/null
}

start() {
  install
  if healthy; then
    echo "etcd: reusing the etcd on 127.0.0.1:$CLIENT_PORT"
    return
  fi
  mkdir -p "$STATE"
  nohup etcd --name switchyard-test --data-dir "$PWD/$STATE/data" \
    --listen-client-urls "http://127.0.0.1:$CLIENT_PORT" \
    --advertise-client-urls "http://127.0.0.1:$CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "switchyard-test=http://127.0.0.1:$PEER_PORT" \
    >"$STATE/etcd.log" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    healthy && { echo "etcd: started on 127.0.0.1:$CLIENT_PORT"; return; }
    sleep 0.1
  done
  echo "etcd: not healthy on 127.0.0.1:$CLIENT_PORT; see $STATE/etcd.log" >&2
  exit 1
}

stop() {
  [ -f "$PIDFILE" ] || { echo "etcd: not started by this script; leaving it"; return; }
  pid=$(cat "$PIDFILE")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  rm -rf "$STATE"
  echo "etcd: stopped"
}

case "${1:-}" in
  start) start ;;
  install) install ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop|install" >&2; exit 2 ;;
esac
