#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs and starts the services
# the integration tests talk to (Redis, Redis Cluster, NATS JetStream, a
# three-node Apache Kafka cluster, etcd, Toxiproxy, and the two region
# network namespaces of cli/tests/it/wan_netns.rs: every scripts/services/*.sh),
# then the fast lane (fmt, clippy per feature set, `cargo doc -D warnings`,
# a check on the rust-version toolchain, `cargo deny`) and every test:
# every optional backend compiled in and every test tier on
# (`--all-features`: `etcd` and the `it-*` features of Cargo.toml and
# cli/Cargo.toml; plain `cargo test` runs only the tests that need none of
# these services). Every cargo command takes the whole workspace (the
# library, cli/ and testkit/).
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob

# Each phase's wall time, so a slow CI run says where its time went.
phase() { echo "== test.sh: $1 done at $SECONDS s"; }

# Set before the starts: a start that fails still stops what the others
# started (each script stops only what it started itself).
trap 'for s in scripts/services/*.sh; do bash "$s" stop || true; done' EXIT
# The shared Kafka keeps its topics in .services/kafka between runs, and
# every run adds a few hundred partitions (a topic per test gateway, RF 3).
# A cluster carrying thousands delivers seconds behind the one a fresh CI
# machine starts: canary_soak's per-pair order failed from the fourth run
# on one machine. So a cluster this script starts starts empty, as on CI;
# one already running is reused as it is.
kafka_data=${KAFKA_DATA:-$PWD/.services/kafka}
kafka_running=false
for pid in "$kafka_data"/node*/pid; do
  kill -0 "$(cat "$pid")" 2>/dev/null && kafka_running=true
done
$kafka_running || rm -rf "$kafka_data"/node*
for service in scripts/services/*.sh; do
  bash "$service" start
done
phase "services"

# promtool checks the Prometheus config, the alert rules and a /metrics
# scrape per shipped config (cli/tests/it/sidecar_deploy.rs, cli/tests/it/sidecar_process.rs,
# tests/sidecar_metrics.rs); headless Chromium loads the status page
# (tests/status_page.rs); the etcd registry's client compiles etcd's protos
# with protoc. All are Debian packages.
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The non-Rust clients the suite runs (tests/it/sidecar_python.rs): the example
# client and grpcio-reflection.
python3 -m pip install --quiet -r examples/python/requirements.txt
# cargo deny checks licenses, bans and sources (deny.toml); pinned, built
# from crates.io (about 2 min on 2 cores).
command -v cargo-deny >/dev/null || cargo install --quiet --locked cargo-deny --version 0.20.2
phase "installs"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets --features etcd -- -D warnings
# The tests that only the test tiers compile.
cargo clippy --workspace --all-targets --all-features -- -D warnings
# The library builds with any one backend, or none (memory only): an
# embedding gateway links only what it enables (Cargo.toml [features]).
for features in "" redis kafka nats grpc etcd regions; do
  cargo clippy -p switchyard --lib --no-default-features --features "$features" -- -D warnings
done
# Every intra-doc link resolves and no public doc points at a private item.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --lib --features etcd
# The oldest Rust the workspace says it builds with (rust-version in
# Cargo.toml; deploy/Dockerfile's image is the same) still builds every
# target, with the locked dependencies.
msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
rustup toolchain install "$msrv" --profile minimal >/dev/null ||
  { echo "test.sh: cannot install Rust $msrv (rust-version) with rustup" >&2; exit 1; }
cargo "+$msrv" check --workspace --all-targets --all-features --locked
# Licenses, bans and sources of every dependency (deny.toml says why not
# advisories). Duplicate versions are warnings; only refusals print.
cargo deny --log-level error check bans licenses sources
phase "fmt, clippy, docs, MSRV build and cargo deny"
# Benches are built by clippy above and measured by `cargo bench`, not run here.
# A test that hangs is a failure with its name on the screen (cargo prints
# "has been running for over 60 seconds"), not a CI run that never ends.
timeout --kill-after=30s "${SWITCHYARD_TEST_TIMEOUT:-45m}" \
  cargo test --workspace --all-features --no-fail-fast -- --test-threads 4
phase "tests"
