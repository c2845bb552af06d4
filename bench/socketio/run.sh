#!/usr/bin/env bash
# Socket.IO + @socket.io/redis-adapter baseline, four points in this order:
#   classic adapter at targets 1 and 100, then sharded adapter at targets 1 and 100.
#   bash bench/socketio/run.sh [extra bench.js flags, e.g. --duration 5]
# Extra flags go to every run (passing --adapter or --targets here would clash
# with the ones this script sets: bench.js keeps the last value of a repeated
# flag, so yours would win and the four points would not be the four above).
# Works from any directory. Installs the pinned packages (npm ci), makes sure
# Redis answers on 127.0.0.1:6379 via scripts/services/redis.sh, and stops
# Redis at the end only if this script's call is the one that started it.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$HERE"

npm ci --no-audit --no-fund --loglevel=error >/dev/null

STARTED=0
out="$(cd "$ROOT" && bash scripts/services/redis.sh start)"
echo "$out"
case "$out" in *"redis: started"*) STARTED=1 ;; esac
cleanup() {
  if [ "$STARTED" = 1 ]; then (cd "$ROOT" && bash scripts/services/redis.sh stop); fi
}
trap cleanup EXIT

rc=0
for adapter in classic sharded; do
  for n in 1 100; do
    node bench.js --adapter "$adapter" --targets "$n" "$@" || rc=$?
  done
done
exit "$rc"
