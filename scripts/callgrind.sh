#!/usr/bin/env bash
# Instructions per message of switchyard's own work, from callgrind: a count
# that does not move with the machine's load, so a change can be measured
# on a shared machine. Runs `switchyard bench --messages N` (closed loop,
# no raw baseline) under valgrind twice, with a small and a large fixed
# count, and divides the difference of instructions by the difference of
# messages, so start-up, warm-up and shutdown cancel out. Threads are
# counted apart: the load generator's (its single-threaded runtime) and
# everything else (switchyard: routers, inboxes, sidecars).
#
#   scripts/callgrind.sh [--bin PATH] [--paths library,sidecar] [--small N] [--large N] [-- BENCH ARGS]
#
# Defaults: the release binary, both paths on the memory transport,
# 2000 and 12000 messages. Extra bench arguments (e.g. `--config
# config/redis.toml --transports redis`) go after `--`. The large run's
# per-thread profiles stay in target/callgrind/ for callgrind_annotate,
# with the top functions (inclusive) of each busy thread beside them.
set -euo pipefail

cd "$(dirname "$0")/.."
bin=target/release/switchyard
paths=library,sidecar
small=2000
large=12000
extra=(--transports memory)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) bin=$2; shift 2 ;;
        --paths) paths=$2; shift 2 ;;
        --small) small=$2; shift 2 ;;
        --large) large=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
[[ -x $bin ]] || { echo "no binary at $bin (cargo build --release)" >&2; exit 1; }
out=target/callgrind
mkdir -p "$out"

# Sum of the `totals:` (or `summary:`) lines of callgrind output files.
total() {
    local sum=0 n
    for f in "$@"; do
        n=$(awk '/^(totals|summary):/ {print $2; exit}' "$f")
        sum=$((sum + ${n:-0}))
    done
    echo "$sum"
}

# Instructions of one run: "ALL GENERATOR" (the generator's thread is the
# one that runs the bench's send loops, `bench::schedule::run_senders`).
measure() {
    local path=$1 n=$2 prefix=$out/$1-$2
    rm -f "$prefix".*
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$prefix.%p" \
        "$bin" bench "${extra[@]}" --paths "$path" --raw=false --messages "$n" \
        >"$prefix.log" 2>&1 || { echo "bench under valgrind failed, see $prefix.log" >&2; exit 1; }
    local files=("$prefix".*-[0-9]*) gen=()
    for f in "${files[@]}"; do
        if grep -q 'bench::schedule::run_senders' "$f"; then gen+=("$f"); fi
    done
    echo "$(total "${files[@]}") $(total "${gen[@]}")"
}

printf '%-8s %14s %14s %14s\n' path "Ir/msg all" "Ir/msg gen" "Ir/msg switchyard"
for path in ${paths//,/ }; do
    read -r all_s gen_s < <(measure "$path" "$small")
    read -r all_l gen_l < <(measure "$path" "$large")
    d=$((large - small))
    all=$(((all_l - all_s) / d))
    gen=$(((gen_l - gen_s) / d))
    printf '%-8s %14d %14d %14d\n' "$path" "$all" "$gen" "$((all - gen))"
    # The top functions (inclusive) of each thread that ran a tenth or more.
    for f in "$out/$path-$large".*-[0-9]*; do
        [[ $(total "$f") -ge $((all_l / 10)) ]] || continue
        callgrind_annotate --inclusive=yes --auto=no "$f" 2>/dev/null | head -60 >"$f.top.txt" || true
    done
done
echo "per-thread profiles of the large runs, and *.top.txt (top functions, inclusive): $out/"
