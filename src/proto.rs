//! Types generated from `proto/` (the wire format), and the gRPC codec
//! every generated service and client uses.

#![allow(missing_docs, clippy::all)]

#[cfg(feature = "grpc")]
pub mod codec;
pub mod delivery;

pub use delivery::Delivery;

include!(concat!(env!("OUT_DIR"), "/switchyard.v1.rs"));

/// The encoded file descriptor set of every proto file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));
