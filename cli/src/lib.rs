//! The product around the switchyard library: what the `switchyard`
//! binary runs besides the library's own sidecar.
//!
//! # Layout
//!
//! - [`bench`](mod@bench): the load generator behind `switchyard bench`,
//!   with the raw-client baselines it is compared with.
//! - [`demo`]: the in-process fleet behind `switchyard demo`.
//! - [`admin_ctl`]: the client of the sidecar's Admin API behind
//!   `switchyard state`, `canary` and `dead-letters`, and its rendering.
//! - `bin/switchyard`: argument parsing and dispatch.
//!
//! The library (`switchyard`) knows nothing of this crate.

#![deny(missing_docs, unsafe_code)]

pub mod admin_ctl;
pub mod bench;
pub mod demo;
