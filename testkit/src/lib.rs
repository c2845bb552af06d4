//! What the integration tests of the workspace share: `tests/it` (the
//! library's) and `cli/tests/it` (the binary's) both depend on this crate,
//! so there is one support tree and no `#[path]` between crates.
//!
//! # Layout
//!
//! - [`servers`]: the addresses of what `scripts/services/*.sh start` runs,
//!   and servers a test owns (private `redis-server`, `nats-server`, Redis
//!   Cluster, Sentinel, NATS and Kafka clusters on ports of its own), killed
//!   on drop.
//! - [`wait`]: polling until a condition holds.
//! - [`sidecars`]: sidecars on free loopback ports, gateway clients, a
//!   plain HTTP GET, promtool.
//! - [`redis_nodes`]: routers whose stores and same-region transport are a
//!   real Redis (standalone or cluster) under a key prefix of their own,
//!   steady sends and the accounting of what arrived ([`on_both!`]).
//! - [`region_fleet`]: several regions, each on its own Redis, Kafka
//!   between them.
//! - [`toxiproxy`]: the simulated WAN.
//! - [`canary_fleet`]: sidecars over Redis and Kafka with steady mixed
//!   traffic, and the ledger that checks it arrived once, in order.
//!
//! Every helper panics with what failed: it runs inside a test.

pub mod canary_fleet;
pub mod redis_nodes;
pub mod region_fleet;
pub mod servers;
pub mod sidecars;
pub mod toxiproxy;
pub mod wait;
