//! The library's integration tests: one binary, a module per subject, the
//! shared support in `testkit/`.
//!
//! Tiers: plain `cargo test` runs what needs no server (memory backends,
//! the gRPC sidecar on loopback, the module graph). Each `it-*` feature of
//! Cargo.toml adds the modules and cases that need a server or tool
//! `scripts/services/*.sh` (or `scripts/test.sh`) provides; `scripts/test.sh`
//! turns them all on. Every test shares the process with the others, so
//! none may disturb a shared server: a test that kills, restarts or fails
//! over a server starts its own (`testkit::servers`), on ports of its own.
//! Only `tests/sidecar_metrics.rs` and `tests/status_page.rs` are apart:
//! each counts exact values in the process-wide metrics recorder.
//!
//! Run one module with `cargo test -p switchyard --test it <module>::`, e.g.
//! `cargo test -p switchyard --features it-redis --test it redis_pubsub::`.

mod architecture;
mod canary_cohort;
mod canary_fault;
mod canary_soak;
mod conformance;
mod cross_region;
mod dashboard;
mod embedded_transport;
mod etcd_registry;
mod nats_fanout;
mod nats_faults;
mod presence_api;
mod presence_cache;
mod quality_routing;
mod redis_faults;
mod redis_pubsub;
mod redis_stores;
mod regions;
mod sidecar_api;
mod sidecar_ops;
mod sidecar_python;
mod sidecar_tls;
mod stores;
mod wan;
