#!/usr/bin/env bash
# Two network namespaces, one per region, for the namespaced fleet of
# cli/tests/it/wan_netns.rs: `sy-us` and `sy-eu`, each with `lo` up and a veth
# pair to the root namespace on its own /30 (root side .1, namespace side
# .2): us 10.77.1.0/30, eu 10.77.2.0/30. Neither namespace has a route
# beyond its own /30 (no default route; forwarding is not switched on),
# so eu cannot reach anything of us: the only way between the regions is
# a proxy in the root namespace (Toxiproxy, the simulated WAN), and the
# network itself keeps same-region traffic off the WAN.
#
#   start   create what is missing (reusing namespaces already there) and
#           wait until each veth pair is up.
#   stop    for the namespaces this script created (state file): end the
#           processes a test left inside them (SIGTERM, SIGKILL after 5 s),
#           then delete them (their veth pairs go with them).
#
# Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2.
set -euo pipefail
cd "$(dirname "$0")/../.."

dir=${NETNS_DATA:-$PWD/.services/netns}
created=$dir/created
# name:third octet of its 10.77.N.0/30.
regions=(us:1 eu:2)

need_tools() {
  command -v ip >/dev/null && return
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq iproute2 >/dev/null
}

exists() { ip netns list | grep -qw "^$1"; }
in_ns() { ip netns exec "$@"; }
has_addr() { in_ns "$1" ip -br addr show dev "$2" 2>/dev/null | grep -qw "$3"; }

# setup REGION OCTET: namespace sy-REGION, veth sy-REGION-root (root side,
# 10.77.OCTET.1) <-> sy-REGION-ns (inside, 10.77.OCTET.2).
setup() {
  local ns=sy-$1 net=10.77.$2 root=sy-$1-root inner=sy-$1-ns
  if ! exists "$ns"; then
    ip netns add "$ns"
    mkdir -p "$dir"
    echo "$ns" >>"$created"
  fi
  in_ns "$ns" ip link set lo up
  if ! in_ns "$ns" ip link show "$inner" >/dev/null 2>&1; then
    # A root end without its peer is left from a deleted namespace.
    ip link del "$root" 2>/dev/null || true
    ip link add "$root" type veth peer name "$inner" netns "$ns"
  fi
  ip -br addr show dev "$root" | grep -qw "$net.1/30" || ip addr add "$net.1/30" dev "$root"
  has_addr "$ns" "$inner" "$net.2/30" || in_ns "$ns" ip addr add "$net.2/30" dev "$inner"
  ip link set "$root" up
  in_ns "$ns" ip link set "$inner" up
  local _
  # The pair carries traffic once both ends report the carrier.
  for _ in $(seq 50); do
    ip -br link show dev "$root" | grep -q LOWER_UP && return
    sleep 0.1
  done
  echo "netns: the link $root <-> $ns does not come up" >&2
  exit 1
}

start() {
  need_tools
  local r
  for r in "${regions[@]}"; do setup "${r%%:*}" "${r##*:}"; done
  echo "netns: sy-us on 10.77.1.2, sy-eu on 10.77.2.2 (root side .1; no route between them)"
}

# Ends what runs inside namespace $1: a test's leftovers, never anything
# outside it.
end_inside() {
  local pids _
  pids=$(ip netns pids "$1" 2>/dev/null || true)
  [[ -n $pids ]] || return 0
  # shellcheck disable=SC2086 # one pid per word
  kill $pids 2>/dev/null || true
  for _ in $(seq 50); do
    [[ -z $(ip netns pids "$1" 2>/dev/null || true) ]] && return
    sleep 0.1
  done
  # shellcheck disable=SC2046
  kill -9 $(ip netns pids "$1" 2>/dev/null || true) 2>/dev/null || true
}

stop() {
  [[ -f $created ]] || return 0
  local ns _
  while read -r ns; do
    exists "$ns" || continue
    end_inside "$ns"
    ip netns del "$ns"
    # The veth pair goes a moment later; a start right after must not see it.
    for _ in $(seq 50); do
      ip link show "$ns-root" >/dev/null 2>&1 || break
      sleep 0.1
    done
    echo "netns: deleted $ns"
  done <"$created"
  rm -f "$created"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
