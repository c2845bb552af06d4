#!/usr/bin/env bash
# Apache Kafka (KRaft) for the integration tests: three combined
# broker+controller nodes on 127.0.0.1, replication factor 3,
# min.insync.replicas 2. docs/KAFKA.md has the set-up and its figures.
#
#   start        reuse a cluster already answering; else fetch the broker's
#                jars with Maven (scripts/services/kafka/pom.xml, cached in
#                ~/.m2), format the nodes' storage once, start every node not
#                running and wait until the metadata lists all three brokers.
#   stop         stop the nodes this script started (pid files), SIGTERM
#                then SIGKILL after 30 s.
#   kill N...    SIGKILL nodes N (1-3) at once, as a crash would.
#   freeze N...  SIGSTOP nodes N: sockets stay open, nothing answers (a partition).
#   start-node N start node N again and wait until the cluster has all three.
#   brokers      print the bootstrap list.
#
# KAFKA_BASE_PORT (default 9092) and KAFKA_DATA (default .services/kafka)
# place a second, private cluster: node N listens for clients on
# BASE+N-1 and for controllers on BASE+100+N-1. Tests that kill nodes use
# one of their own (testkit/src/servers.rs, `PrivateKafka`); keep ports below
# 32768, out of the kernel's ephemeral range. KAFKA_WAN_BASE adds a second
# listener per node on BASE+200+N-1 whose advertised address is
# 127.0.0.1:KAFKA_WAN_BASE+N-1: a proxy there forwarding to it (the
# simulated WAN of tests/it/wan.rs) keeps the clients of a remote region on the
# proxy, while the first listener stays direct for the local one.
# KAFKA_WAN_HOST (default 127.0.0.1) is the address that listener binds and
# KAFKA_WAN_ADVERTISED_HOST (default 127.0.0.1) the host it advertises: in
# cli/tests/it/wan_netns.rs the cluster runs in namespace sy-us, binds WAN on its
# veth (10.77.1.2) and advertises the proxy eu reaches (10.77.2.1).
set -euo pipefail
cd "$(dirname "$0")/../.."

base=${KAFKA_BASE_PORT:-9092}
wan=${KAFKA_WAN_BASE:-}
wan_host=${KAFKA_WAN_HOST:-127.0.0.1}
wan_advertised=${KAFKA_WAN_ADVERTISED_HOST:-127.0.0.1}
data=${KAFKA_DATA:-$PWD/.services/kafka}
here=$PWD/scripts/services/kafka
nodes=(1 2 3)
# Heap per node: three nodes beside the test suite's builds on 2 cores.
heap=${KAFKA_HEAP:-512m}

client_port() { echo $((base + $1 - 1)); }
controller_port() { echo $((base + 100 + $1 - 1)); }
brokers() {
  local n list=()
  for n in "${nodes[@]}"; do list+=("127.0.0.1:$(client_port "$n")"); done
  (IFS=,; echo "${list[*]}")
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { [[ -f $data/node$1/pid ]] && kill -0 "$(cat "$data/node$1/pid")" 2>/dev/null; }

# The broker's run-time classpath, resolved once per pom change; Maven
# works offline when ~/.m2 has everything.
classpath() {
  local cp=$data/classpath
  if [[ ! -s $cp || $here/pom.xml -nt $cp ]]; then
    mkdir -p "$data"
    local mvn=(mvn -q -B -f "$here/pom.xml" dependency:build-classpath
      -Dmdep.outputFile="$cp.tmp" -Dmdep.includeScope=runtime)
    if ! "${mvn[@]}" -o >/dev/null 2>&1; then
      echo "kafka: fetching Apache Kafka with Maven (first start only)"
      "${mvn[@]}" >"$data/maven.log" 2>&1 || {
        echo "kafka: maven failed; see $data/maven.log" >&2
        exit 1
      }
    fi
    mv "$cp.tmp" "$cp"
  fi
  cat "$cp"
}

java_run() {
  local main=$1
  shift
  java -cp "$(classpath)" "$main" "$@"
}

# How many brokers the cluster's metadata lists (0 if nothing answers).
broker_count() {
  java_run org.apache.kafka.tools.BrokerApiVersionsCommand \
    --bootstrap-server "$(brokers)" 2>/dev/null | grep -c ' (id: ' || true
}

config() {
  local n=$1 voters=() m
  local listeners="PLAINTEXT://127.0.0.1:$(client_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")"
  local advertised="PLAINTEXT://127.0.0.1:$(client_port "$n")"
  if [[ -n $wan ]]; then
    listeners+=",WAN://$wan_host:$((base + 200 + n - 1))"
    advertised+=",WAN://$wan_advertised:$((wan + n - 1))"
  fi
  for m in "${nodes[@]}"; do voters+=("$m@127.0.0.1:$(controller_port "$m")"); done
  cat <<EOF
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(IFS=,; echo "${voters[*]}")
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,WAN:PLAINTEXT
log.dirs=$data/node$n/log
num.partitions=1
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
group.initial.rebalance.delay.ms=0
# switchyard creates its topics (topics.create); a typo'd name must not
# silently make a topic of replication factor 3 nobody reads.
auto.create.topics.enable=false
# Tests run consumers with a short session.timeout.ms (switchyard's default 10 s).
group.min.session.timeout.ms=2000
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
log.segment.bytes=67108864
# Quicker failover when a node is killed: the controller fences a broker
# whose heartbeats stop after this long.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500
EOF
}

# Formats node N's log dir once (the cluster id is fixed, so every data
# dir, main or private, belongs to a cluster of the same id).
format_node() {
  local n=$1 dir=$data/node$1
  mkdir -p "$dir"
  config "$n" >"$dir/server.properties"
  [[ -f $dir/log/meta.properties ]] && return
  java_run kafka.tools.StorageTool format --ignore-formatted \
    -t "$(cat "$here/cluster.id")" -c "$dir/server.properties" >"$dir/format.log" 2>&1 || {
    echo "kafka: formatting node $n failed; see $dir/format.log" >&2
    return 1
  }
}

start_node() {
  local n=$1 dir=$data/node$1
  if alive "$n"; then return; fi
  format_node "$n"
  # G1 with a fixed heap; C1 only (TieredStopAtLevel=1) starts a node
  # faster and a test broker never runs long enough to pay for C2.
  # shellcheck disable=SC2086 # KAFKA_JVM_OPTS is a list of flags
  nohup java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    ${KAFKA_JVM_OPTS--XX:TieredStopAtLevel=1} -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dkafka.logs.dir="$dir" -Dlog4j2.configurationFile="$here/log4j2.properties" \
    -cp "$(classpath)" kafka.Kafka "$dir/server.properties" >"$dir/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
}

wait_ready() {
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-120})) n
  while ((SECONDS < deadline)); do
    local up=0
    for n in "${nodes[@]}"; do listening "$(client_port "$n")" && up=$((up + 1)); done
    if ((up == ${#nodes[@]})) && [[ $(broker_count) -ge ${#nodes[@]} ]]; then
      return 0
    fi
    for n in "${nodes[@]}"; do
      if [[ -f $data/node$n/pid ]] && ! alive "$n"; then
        echo "kafka: node $n exited; see $data/node$n/server.log" >&2
        return 1
      fi
    done
    sleep 0.5
  done
  echo "kafka: the cluster did not list ${#nodes[@]} brokers in time; see $data/node*/server.log" >&2
  return 1
}

# gone PID... TRIES: true once every PID has exited, polling every 0.1 s.
gone() {
  local tries=${*: -1} pid
  for pid in "${@:1:$#-1}"; do
    while kill -0 "$pid" 2>/dev/null; do
      ((tries-- > 0)) || return 1
      sleep 0.1
    done
  done
}

node_arg() {
  [[ ${1:-} =~ ^[123]$ ]] || { echo "usage: $0 kill|freeze|start-node 1|2|3" >&2; exit 2; }
}

# Java 17 and Maven are on the project's machines; install them if not.
need_tools() {
  command -v java >/dev/null && command -v mvn >/dev/null && return
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
}

case "${1:-}" in
start)
  started=$SECONDS
  need_tools
  all_up=true
  for n in "${nodes[@]}"; do alive "$n" || all_up=false; done
  if listening "$(client_port 1)" && ! $all_up; then
    # Someone else's cluster (or a node left from a run we did not start).
    if [[ $(broker_count) -ge ${#nodes[@]} ]]; then
      echo "kafka: reusing the cluster on $(brokers)"
      exit 0
    fi
  fi
  classpath >/dev/null
  # Formatting is a JVM start per node: do the three at once.
  for n in "${nodes[@]}"; do format_node "$n" & done
  wait
  for n in "${nodes[@]}"; do start_node "$n"; done
  wait_ready
  echo "kafka: 3 brokers up on $(brokers) in $((SECONDS - started)) s (data and logs in $data)"
  ;;
stop)
  pids=()
  for n in "${nodes[@]}"; do
    if alive "$n"; then pids+=("$(cat "$data/node$n/pid")"); fi
    rm -f "$data/node$n/pid"
  done
  if ((${#pids[@]})); then
    kill "${pids[@]}" 2>/dev/null || true
    gone "${pids[@]}" 300 || kill -9 "${pids[@]}" 2>/dev/null || true
    gone "${pids[@]}" 100 || true
    echo "kafka: stopped"
  fi
  ;;
kill)
  shift
  pids=()
  for n in "$@"; do
    node_arg "$n"
    if alive "$n"; then pids+=("$(cat "$data/node$n/pid")"); fi
    rm -f "$data/node$n/pid"
  done
  if ((${#pids[@]})); then
    kill -9 "${pids[@]}" 2>/dev/null || true
    gone "${pids[@]}" 600 || true
  fi
  ;;
freeze)
  # SIGSTOP: the node keeps its sockets and answers nothing (a partition
  # without resets); kill or stop ends it as usual.
  shift
  for n in "$@"; do
    node_arg "$n"
    if alive "$n"; then kill -STOP "$(cat "$data/node$n/pid")"; fi
  done
  ;;
start-node)
  node_arg "${2:-}"
  start_node "$2"
  wait_ready
  ;;
brokers)
  brokers
  ;;
*)
  echo "usage: $0 start|stop|kill N...|freeze N...|start-node N|brokers" >&2
  exit 2
  ;;
esac
