#!/usr/bin/env bash
# Standalone Redis on 127.0.0.1:6379 for the integration tests.
#   start: reuse a Redis that answers PING there; otherwise install
#          redis-server if missing and start one (no persistence).
#   stop:  stop only the Redis this script started (pid in .services/).
#   install: only install redis-server and redis-cli if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=6379
STATE=.services/redis
PIDFILE=$STATE/redis.pid

ping() { redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -q PONG; }

install() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return
  echo "redis: installing redis-server"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
}

start() {
  install
  if ping; then
    echo "redis: reusing the Redis on 127.0.0.1:$PORT"
    return
  fi
  mkdir -p "$STATE"
  redis-server --daemonize yes --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$PWD/$STATE" --pidfile "$PWD/$PIDFILE" --logfile "$PWD/$STATE/redis.log"
  for _ in $(seq 1 100); do
    ping && { echo "redis: started on 127.0.0.1:$PORT"; return; }
    sleep 0.1
  done
  echo "redis: did not answer PING on 127.0.0.1:$PORT; see $STATE/redis.log" >&2
  exit 1
}

stop() {
  [ -f "$PIDFILE" ] || { echo "redis: not started by this script; leaving it"; return; }
  kill "$(cat "$PIDFILE")" 2>/dev/null || true
  rm -rf "$STATE"
  echo "redis: stopped"
}

case "${1:-}" in
  start) start ;;
  install) install ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop|install" >&2; exit 2 ;;
esac
