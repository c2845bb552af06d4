#!/usr/bin/env bash
# Toxiproxy, the simulated WAN of tests/it/wan.rs: a TCP proxy per
# cross-region link, with latency and cuts set through its HTTP API
# (127.0.0.1:27474; TOXIPROXY_PORT moves it). Proxies are created by the
# tests themselves and deleted when they finish.
#
#   start    reuse a server already answering; else build toxiproxy-server
#            with `go install` (Go module proxy, pinned version) into
#            .services/toxiproxy/bin, start it, wait until the API answers.
#   stop     stop the server this script started (pid file).
#   install  only build the binary.
set -euo pipefail
cd "$(dirname "$0")/../.."

version=v2.12.0
port=${TOXIPROXY_PORT:-27474}
dir=${TOXIPROXY_DATA:-$PWD/.services/toxiproxy}
bin=$dir/bin/server
pidfile=$dir/pid

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install() {
  [[ -x $bin ]] && return
  command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
  command -v go >/dev/null || {
    echo "toxiproxy: go is needed to build toxiproxy-server (apt-get install golang-go)" >&2
    exit 1
  }
  echo "toxiproxy: building toxiproxy-server $version (first start only)"
  mkdir -p "$dir/bin"
  GOBIN=$dir/bin GOFLAGS=-mod=mod go install "github.com/Shopify/toxiproxy/v2/cmd/server@$version"
}

start() {
  if listening "$port"; then
    echo "toxiproxy: reusing the server on 127.0.0.1:$port"
    return
  fi
  install
  nohup "$bin" -host 127.0.0.1 -port "$port" >"$dir/log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 100); do
    if listening "$port"; then
      echo "toxiproxy: started on 127.0.0.1:$port (pid $(cat "$pidfile"), log $dir/log)"
      return
    fi
    sleep 0.1
  done
  echo "toxiproxy: not answering on $port; see $dir/log" >&2
  exit 1
}

stop() {
  [[ -f $pidfile ]] || return 0
  local pid
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "toxiproxy: stopped (pid $pid)"
  fi
  rm -f "$pidfile"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  install) install ;;
  *) echo "usage: $0 start|stop|install" >&2; exit 2 ;;
esac
