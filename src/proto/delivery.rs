//! `switchyard.v1.Delivery` (gateway.proto), written by hand instead of
//! generated (`extern_path` in build.rs) so that a sidecar can put an
//! envelope on the Attach stream as the bytes the envelope codec writes
//! (`Envelope::encode`, byte for byte prost's) rather than first copying
//! every id into a `proto::Envelope`. On the wire it is the same message:
//! an embedded message and a `bytes` field are both length-delimited, so
//! every client, in any language, decodes it as gateway.proto says.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

use super::Envelope;

/// One message for the gateway to hand to its connections.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Delivery {
    /// The message, as a client decodes it. For a group message the gateway
    /// fans out to the members it hosts.
    pub envelope: Option<Envelope>,
    /// How it arrived: "local", "offline" or a transport name ("memory",
    /// "redis", "kafka", "nats", "grpc").
    pub via: String,
    /// From the envelope's creation to its acceptance by this sidecar, in
    /// microseconds.
    pub latency_micros: u64,
    /// Position of this delivery for Ack: increases by one per delivery of
    /// the gateway's inbox.
    pub seq: u64,
    /// The envelope already encoded, sent in place of `envelope`.
    encoded: Option<Bytes>,
}

impl Delivery {
    /// A delivery of an envelope encoded as `switchyard.v1.Envelope`.
    pub fn encoded(envelope: Bytes, via: String, latency_micros: u64, seq: u64) -> Self {
        Self {
            envelope: None,
            via,
            latency_micros,
            seq,
            encoded: Some(envelope),
        }
    }
}

impl prost::Message for Delivery {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match (&self.encoded, &self.envelope) {
            (Some(bytes), _) => encoding::bytes::encode(1, bytes, buf),
            (None, Some(envelope)) => encoding::message::encode(1, envelope, buf),
            (None, None) => {}
        }
        if !self.via.is_empty() {
            encoding::string::encode(2, &self.via, buf);
        }
        if self.latency_micros != 0 {
            encoding::uint64::encode(3, &self.latency_micros, buf);
        }
        if self.seq != 0 {
            encoding::uint64::encode(4, &self.seq, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::message::merge(
                wire_type,
                self.envelope.get_or_insert_with(Envelope::default),
                buf,
                ctx,
            ),
            2 => encoding::string::merge(wire_type, &mut self.via, buf, ctx),
            3 => encoding::uint64::merge(wire_type, &mut self.latency_micros, buf, ctx),
            4 => encoding::uint64::merge(wire_type, &mut self.seq, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let envelope = match (&self.encoded, &self.envelope) {
            (Some(bytes), _) => encoding::bytes::encoded_len(1, bytes),
            (None, Some(envelope)) => encoding::message::encoded_len(1, envelope),
            (None, None) => 0,
        };
        let via = if self.via.is_empty() {
            0
        } else {
            encoding::string::encoded_len(2, &self.via)
        };
        let latency = if self.latency_micros == 0 {
            0
        } else {
            encoding::uint64::encoded_len(3, &self.latency_micros)
        };
        let seq = if self.seq == 0 {
            0
        } else {
            encoding::uint64::encoded_len(4, &self.seq)
        };
        envelope + via + latency + seq
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn an_encoded_delivery_is_the_generated_message_on_the_wire() {
        let envelope = crate::envelope::sample();
        let wire = envelope.to_wire();
        let built = Delivery {
            envelope: Some(wire.clone()),
            via: "redis".into(),
            latency_micros: 1234,
            seq: 7,
            encoded: None,
        };
        let encoded = Delivery::encoded(envelope.encode(), "redis".into(), 1234, 7);
        let bytes = encoded.encode_to_vec();
        assert_eq!(bytes, built.encode_to_vec());
        assert_eq!(bytes.len(), encoded.encoded_len());
        let decoded = Delivery::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded.envelope, Some(wire));
        assert_eq!(
            (decoded.via.as_str(), decoded.latency_micros, decoded.seq),
            ("redis", 1234, 7)
        );
    }
}
