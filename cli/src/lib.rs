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

/// An id this binary makes up from a fresh run id and a counter: it keeps
/// the identifier rules by construction, so a failure is a bug here, not
/// bad input.
pub(crate) fn made_id<T: TryFrom<String, Error = switchyard::IdError>>(id: String) -> T {
    T::try_from(id).unwrap_or_else(|err| panic!("a made-up id breaks its rule: {err}"))
}
