//! The integration tests of the `switchyard` binary: one test binary, a
//! module per subject. Most run `switchyard` itself as a process
//! (`CARGO_BIN_EXE_switchyard`: signals, exit codes, deploy files, network
//! namespaces); the support they share with the library's tests is in
//! `testkit/`, what only they need is [`process`] and `netns`.
//!
//! Tiers as in `tests/it/main.rs`: plain `cargo test` runs what needs no
//! server, each `it-*` feature of cli/Cargo.toml adds what needs one, and
//! no test disturbs a server another test shares.

mod acked_delivery;
mod canary_admin;
mod cli;
mod compression;
mod dead_letters;
mod fleet;
mod kafka_faults;
#[cfg(feature = "it-netns")]
mod netns;
mod process;
mod sidecar_deploy;
mod sidecar_fleet;
mod sidecar_process;
mod sidecar_security;
mod wan_netns;
