#!/usr/bin/env bash
# NATS server with JetStream on 127.0.0.1:4222 for the integration tests.
#   start: reuse a server already answering there; else install nats-server
#          (apt) if missing, start it in the background (log, pid and data
#          under .services/nats) and wait until it accepts connections.
#   stop:  stop the server only if this script started it.
set -euo pipefail
cd "$(dirname "$0")/../.."

port=4222
dir=.services/nats
pidfile=$dir/pid

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

case "${1:-}" in
start)
  if listening; then
    echo "nats: reusing the server on 127.0.0.1:$port"
    exit 0
  fi
  if ! command -v nats-server >/dev/null && [[ ! -x /usr/sbin/nats-server ]]; then
    echo "nats: installing nats-server"
    apt-get update -qq && apt-get install -y -qq nats-server
  fi
  server=$(command -v nats-server || echo /usr/sbin/nats-server)
  mkdir -p "$dir/data"
  nohup "$server" -a 127.0.0.1 -p "$port" -js -sd "$dir/data" >"$dir/log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 100); do
    if listening; then
      echo "nats: started on 127.0.0.1:$port (pid $(cat "$pidfile"), log $dir/log)"
      exit 0
    fi
    sleep 0.1
  done
  echo "nats: not answering on 127.0.0.1:$port after 10s; see $dir/log" >&2
  exit 1
  ;;
stop)
  if [[ -f $pidfile ]]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
    echo "nats: stopped"
  fi
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
