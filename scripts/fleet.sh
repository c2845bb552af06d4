#!/usr/bin/env bash
# A local fleet for trying the sidecar by hand: three sidecars on loopback
# sharing the Redis and Kafka of scripts/services/ (gateways pick region
# "eu" or "us" when they attach).
#
#   for s in redis kafka; do scripts/services/$s.sh start; done
#
#   scripts/fleet.sh start   # builds, starts, waits until each is ready
#   scripts/fleet.sh stop    # SIGTERM (graceful drain), waits for exit
#   scripts/fleet.sh status
#
#   sidecar   gRPC              telemetry (/metrics /healthz /readyz)
#   1         127.0.0.1:8061   127.0.0.1:9561
#   2         127.0.0.1:8062   127.0.0.1:9562
#   3         127.0.0.1:8063   127.0.0.1:9563
#
# Ports sit below the kernel's ephemeral range (32768+), so client sockets
# never hold them. FLEET_GRPC_BASE and FLEET_HTTP_BASE (default 8060, 9560)
# move them: sidecar n listens on base+n. Config: deploy/config/fleet.toml (override with FLEET_CONFIG). Logs and
# pid files: .services/fleet/ (FLEET_STATE). FLEET_BIN runs a given binary
# instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${FLEET_STATE:-.services/fleet}
CONFIG=${FLEET_CONFIG:-deploy/config/fleet.toml}
BIN=${FLEET_BIN:-${CARGO_TARGET_DIR:-target}/debug/switchyard}
GRPC_BASE=${FLEET_GRPC_BASE:-8060}
HTTP_BASE=${FLEET_HTTP_BASE:-9560}

start() {
  mkdir -p "$STATE"
  [[ -n ${FLEET_BIN:-} ]] || cargo build --quiet --bin switchyard
  for n in 1 2 3; do
    pidfile="$STATE/sidecar-$n.pid"
    if [[ -f $pidfile ]] && alive "$(cat "$pidfile")"; then
      echo "sidecar-$n already running (pid $(cat "$pidfile"))"
      continue
    fi
    SWITCHYARD__SIDECAR__LISTEN="127.0.0.1:$((GRPC_BASE + n))" \
    SWITCHYARD__TELEMETRY__LISTEN="127.0.0.1:$((HTTP_BASE + n))" \
      "$BIN" serve --config "$CONFIG" >"$STATE/sidecar-$n.log" 2>&1 &
    echo $! >"$pidfile"
  done
  for n in 1 2 3; do
    for _ in $(seq 200); do
      if ready "$n"; then echo "sidecar-$n ready (grpc 127.0.0.1:$((GRPC_BASE + n)))"; continue 2; fi
      sleep 0.1
    done
    echo "sidecar-$n did not become ready; $STATE/sidecar-$n.log ends:" >&2
    tail -5 "$STATE/sidecar-$n.log" >&2
    exit 1
  done
}

# GET /readyz with bash's /dev/tcp: no curl needed.
ready() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$((HTTP_BASE + $1))" &&
      printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 &&
      head -1 <&3 | grep -q ' 200 '
  ) 2>/dev/null
}

# Running and not yet a zombie (whoever reaps orphans may take its time).
alive() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

stop() {
  for n in 1 2 3; do
    pidfile="$STATE/sidecar-$n.pid"
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if kill -TERM "$pid" 2>/dev/null; then
      for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
      echo "sidecar-$n stopped"
    fi
    rm -f "$pidfile"
  done
}

status() {
  for n in 1 2 3; do
    if ready "$n"; then echo "sidecar-$n ready"; else echo "sidecar-$n not ready"; fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
