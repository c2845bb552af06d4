#!/usr/bin/env bash
# A Kafka-protocol broker (tansu, in-memory storage) on 127.0.0.1:9092 for
# the integration tests. No Apache Kafka package is reachable here; see
# docs/KAFKA.md for the broker choice and its quirks.
#   start: reuse a broker already answering there; else install tansu
#          (`cargo install`, about 10 minutes, only when missing), start it in
#          the background (log and pid under .services/kafka) and wait until
#          it accepts connections.
#   stop:  stop the broker only if this script started it.
set -euo pipefail
cd "$(dirname "$0")/../.."

port=9092
dir=.services/kafka
pidfile=$dir/pid
tansu=${CARGO_HOME:-$HOME/.cargo}/bin/tansu

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

case "${1:-}" in
start)
  if listening; then
    echo "kafka: reusing the broker on 127.0.0.1:$port"
    exit 0
  fi
  if [[ ! -x $tansu ]]; then
    echo "kafka: installing tansu (cargo install, takes about 10 minutes)"
    cargo install tansu --version 0.6.0 --features dynostore --locked
  fi
  mkdir -p "$dir"
  url=tcp://127.0.0.1:$port
  nohup "$tansu" broker --storage-engine memory://tansu/ \
    --listener-url "$url" --advertised-listener-url "$url" >"$dir/log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 200); do
    if listening; then
      echo "kafka: tansu started on 127.0.0.1:$port (pid $(cat "$pidfile"), log $dir/log)"
      exit 0
    fi
    sleep 0.1
  done
  echo "kafka: not answering on 127.0.0.1:$port after 20s; see $dir/log" >&2
  exit 1
  ;;
stop)
  if [[ -f $pidfile ]]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
    echo "kafka: stopped"
  fi
  ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
