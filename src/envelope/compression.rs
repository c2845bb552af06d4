//! Envelope compression on the wire: a transport configured with
//! `envelope_compression` sends each encoded envelope of at least
//! `min_bytes` as a small outer envelope carrying only the message id
//! (field 1, so broker-side dedupe and [`super::Envelope::peek_id`] still
//! see it), the codec (field 11) and the compressed inner envelope (field
//! 12). [`super::Envelope::decode`] opens either form, so a receiver reads
//! it whatever transport carried it.
//!
//! lz4 bodies are the lz4 block format after the inner length (4 bytes,
//! little endian); zstd bodies are one zstd frame, which records its
//! content size. Either way the receiver knows the size before it
//! allocates, and refuses more than [`MAX_INNER`] (a compressed message
//! cannot make a receiver allocate more than an uncompressed one could).

use std::cell::RefCell;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::cause::Cause;
use crate::config::range::{Bounded, Bounds, MIB};

/// The largest inner envelope a receiver decompresses: the top of
/// `limits.max_payload_bytes`' range (64 MiB) plus room for ids and fields.
pub const MAX_INNER: usize = 65 * 1024 * 1024;

/// The wire values of field 11.
const WIRE_LZ4: u64 = 1;
const WIRE_ZSTD: u64 = 2;

/// Which codec compresses envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Sent as encoded (the default).
    #[default]
    None,
    /// LZ4 (block format): the cheapest in CPU, a smaller ratio.
    Lz4,
    /// Zstandard at `level`: a better ratio for more CPU.
    Zstd,
}

impl Codec {
    /// The name used in config, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

/// `[transports.<name>.envelope_compression]`: per transport, so a link
/// that is cheap to cross (Redis in a region) can stay uncompressed while
/// one billed by the byte (Kafka across regions) compresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// `none`, `lz4` or `zstd`.
    pub codec: Codec,
    /// Encoded envelopes smaller than this are sent as they are: short chat
    /// lines gain nothing and would pay the CPU.
    pub min_bytes: usize,
    /// zstd level (1 fastest .. 22 smallest); ignored by lz4.
    pub level: i32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            codec: Codec::None,
            min_bytes: 1024,
            level: 3,
        }
    }
}

impl Bounded for CompressionConfig {
    fn bounds(&self, b: &mut Bounds, section: &str) {
        b.count(section, "min_bytes", self.min_bytes, 0, 64 * MIB);
        // zstd's own range; negative (faster) levels are not offered.
        b.count(section, "level", self.level, 1, 22);
    }
}

/// A compressed body that does not open.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CompressionError {
    /// Field 11 names no codec this version knows.
    #[error("unknown compression codec {0}")]
    UnknownCodec(u64),
    /// The body says it opens to more than [`MAX_INNER`] bytes (or does
    /// not say, for zstd).
    #[error("{codec} body opens to {size:?} bytes (at most {MAX_INNER} are accepted)")]
    TooLarge {
        /// The codec.
        codec: &'static str,
        /// The size the body declares, if it declares one.
        size: Option<u64>,
    },
    /// The codec refused the body.
    #[error("{codec} body does not decompress")]
    Corrupt {
        /// The codec.
        codec: &'static str,
        /// What the codec said.
        #[source]
        reason: Cause,
    },
}

thread_local! {
    /// One zstd context per thread (and level): creating one costs more
    /// than compressing a chat message.
    static ZSTD_OUT: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static ZSTD_IN: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

impl CompressionConfig {
    /// `encoded` as it goes on the wire: compressed into an outer envelope
    /// when it is at least `min_bytes` and compressing makes it smaller,
    /// else unchanged (no copy). `id` is the envelope's 16-byte id.
    pub fn pack(&self, id: &[u8; 16], encoded: &Bytes) -> Bytes {
        if self.codec == Codec::None || encoded.len() < self.min_bytes {
            return encoded.clone();
        }
        let (wire, body) = match self.codec {
            Codec::None => return encoded.clone(),
            Codec::Lz4 => (WIRE_LZ4, lz4_flex::block::compress_prepend_size(encoded)),
            Codec::Zstd => match zstd_compress(self.level, encoded) {
                Ok(body) => (WIRE_ZSTD, body),
                Err(err) => {
                    // Only a bad level gets here (checked by config): send as is.
                    tracing::warn!(%err, level = self.level, "zstd refused to compress; sending uncompressed");
                    return encoded.clone();
                }
            },
        };
        let outer = super::codec::compressed_len(id, wire, body.len());
        if outer >= encoded.len() {
            // Already dense (an image, encrypted text): not worth the receiver's CPU.
            return encoded.clone();
        }
        let mut buf = Vec::with_capacity(outer);
        super::codec::put_compressed(&mut buf, id, wire, &body);
        debug_assert_eq!(buf.len(), outer);
        Bytes::from(buf)
    }
}

fn zstd_compress(level: i32, data: &[u8]) -> std::io::Result<Vec<u8>> {
    ZSTD_OUT.with(|cell| {
        let mut slot = cell.borrow_mut();
        let mut compressor = match slot.take() {
            Some((at, compressor)) if at == level => compressor,
            _ => zstd::bulk::Compressor::new(level)?,
        };
        let body = compressor.compress(data);
        *slot = Some((level, compressor));
        body
    })
}

/// Opens a body written by [`CompressionConfig::pack`] with wire codec `wire`.
pub(super) fn unpack(wire: u64, body: &[u8]) -> Result<Vec<u8>, CompressionError> {
    match wire {
        WIRE_LZ4 => {
            let codec = "lz4";
            let size = body
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
            match size {
                Some(size) if size <= MAX_INNER => {}
                size => {
                    return Err(CompressionError::TooLarge {
                        codec,
                        size: size.map(|s| s as u64),
                    })
                }
            }
            lz4_flex::block::decompress_size_prepended(body).map_err(|e| {
                CompressionError::Corrupt {
                    codec,
                    reason: Cause::new(e),
                }
            })
        }
        WIRE_ZSTD => {
            let codec = "zstd";
            let size = zstd::zstd_safe::get_frame_content_size(body).map_err(|_| {
                CompressionError::Corrupt {
                    codec,
                    reason: Cause::from_message("not a zstd frame"),
                }
            })?;
            let size = match size {
                Some(size) if size <= MAX_INNER as u64 => size as usize,
                size => return Err(CompressionError::TooLarge { codec, size }),
            };
            let corrupt = |e: std::io::Error| CompressionError::Corrupt {
                codec,
                reason: Cause::new(e),
            };
            ZSTD_IN.with(|cell| {
                let mut slot = cell.borrow_mut();
                let mut decompressor = match slot.take() {
                    Some(decompressor) => decompressor,
                    None => zstd::bulk::Decompressor::new().map_err(corrupt)?,
                };
                let inner = decompressor.decompress(body, size).map_err(corrupt);
                *slot = Some(decompressor);
                inner
            })
        }
        other => Err(CompressionError::UnknownCodec(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Destination, Envelope, EnvelopeError};

    fn chat(len: usize) -> Envelope {
        let line = "see you at the station at nine, bring the tickets and the map please. ";
        let text: String = line.chars().cycle().take(len).collect();
        Envelope::new("alice", "gw-1", Destination::User("bob".into()), text)
    }

    fn config(codec: Codec) -> CompressionConfig {
        CompressionConfig {
            codec,
            ..CompressionConfig::default()
        }
    }

    #[test]
    fn both_codecs_shrink_text_and_decode_to_the_same_envelope() {
        let env = chat(4096);
        let plain = env.encode();
        for codec in [Codec::Lz4, Codec::Zstd] {
            let wire = config(codec).pack(&env.id.to_bytes(), &plain);
            assert!(wire.len() * 4 < plain.len(), "{codec:?}: {}", wire.len());
            assert_eq!(Envelope::decode(wire.clone()).unwrap(), env);
            assert_eq!(Envelope::peek_id(&wire).unwrap(), env.id);
        }
    }

    #[test]
    fn small_or_dense_envelopes_go_as_they_are() {
        let small = chat(200);
        let plain = small.encode();
        let wire = config(Codec::Zstd).pack(&small.id.to_bytes(), &plain);
        assert_eq!(wire, plain);
        // Pseudo-random bytes do not compress: sent as encoded.
        let mut x = 0x9e37_79b9_u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let dense = Envelope::new("a", "g", Destination::User("b".into()), noise);
        let plain = dense.encode();
        assert_eq!(config(Codec::Lz4).pack(&dense.id.to_bytes(), &plain), plain);
    }

    #[test]
    fn a_bomb_or_a_broken_body_is_refused_by_name() {
        let env = chat(4096);
        let id = env.id.to_bytes();
        // An lz4 body claiming 4 GiB.
        let mut bomb = Vec::new();
        crate::envelope::codec::put_compressed(&mut bomb, &id, WIRE_LZ4, &[0xff; 12]);
        let err = Envelope::decode(Bytes::from(bomb)).unwrap_err();
        assert!(
            matches!(
                &err,
                EnvelopeError::Compression {
                    source: CompressionError::TooLarge {
                        codec: "lz4",
                        size: Some(4294967295)
                    },
                    ..
                }
            ),
            "{err}"
        );
        let mut wire = config(Codec::Zstd).pack(&id, &env.encode()).to_vec();
        let last = wire.len() - 1;
        wire[last] ^= 0xff;
        let err = Envelope::decode(Bytes::from(wire)).unwrap_err();
        assert!(
            matches!(
                &err,
                EnvelopeError::Compression {
                    source: CompressionError::Corrupt { codec: "zstd", .. },
                    ..
                }
            ),
            "{err}"
        );
        let mut unknown = Vec::new();
        crate::envelope::codec::put_compressed(&mut unknown, &id, 9, b"xyz");
        let err = Envelope::decode(Bytes::from(unknown)).unwrap_err();
        // The envelope names the message; its source, the codec.
        let text = crate::cause::Report(&err).to_string();
        assert!(text.contains("unknown compression codec 9"), "{text}");
    }

    #[test]
    fn nested_or_mismatched_inner_envelopes_are_malformed() {
        let env = chat(4096);
        let id = env.id.to_bytes();
        let once = config(Codec::Lz4).pack(&id, &env.encode());
        let body = lz4_flex::block::compress_prepend_size(&once);
        let mut twice = Vec::new();
        crate::envelope::codec::put_compressed(&mut twice, &id, WIRE_LZ4, &body);
        assert!(matches!(
            Envelope::decode(Bytes::from(twice)),
            Err(EnvelopeError::Malformed(_))
        ));
        let other = crate::envelope::MessageId::new().to_bytes();
        let body = lz4_flex::block::compress_prepend_size(&env.encode());
        let mut swapped = Vec::new();
        crate::envelope::codec::put_compressed(&mut swapped, &other, WIRE_LZ4, &body);
        assert!(matches!(
            Envelope::decode(Bytes::from(swapped)),
            Err(EnvelopeError::Malformed(_))
        ));
    }
}
