//! prost's gRPC codec with two changes, shared by every generated service
//! and client:
//!
//! - A message that does not decode is the sender's mistake:
//!   `INVALID_ARGUMENT`, not tonic's `INTERNAL` (which tells a client to
//!   report a server bug, or to retry). On a client the error reads the same.
//! - Messages are encoded into an exactly sized `Vec` and handed to tonic's
//!   buffer in one copy, and decoded from a contiguous `Bytes`: prost writes
//!   and reads varints a byte at a time, and through tonic's `BytesMut`
//!   buffers each byte was a capacity-checked `put_slice` (a `memcpy` call)
//!   or `advance`: the sidecar path's largest cost under callgrind
//!   (docs/bench/HISTORY.md). `bytes` fields configured as `Bytes` (payloads)
//!   decode as slices of the request, without a copy.

use std::marker::PhantomData;

use bytes::{Buf, BufMut};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// The codec the generated code names (`codec_path` in build.rs).
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = StrictEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        StrictEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

/// Encodes with prost into a `Vec` of the exact size, then copies it once.
#[derive(Debug)]
pub struct StrictEncoder<T>(PhantomData<T>);

impl<T: prost::Message> Encoder for StrictEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item.encode_to_vec());
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes with prost from the message's bytes; a decode error becomes
/// `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: prost::Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        U::decode(bytes).map(Some).map_err(|err| {
            Status::invalid_argument(format!("the request does not decode as protobuf: {err}"))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
