//! The wire format of an [`Envelope`] (protobuf, the same on every
//! transport) and its conversion to and from the generated gRPC type.

use std::time::Duration;

use bytes::Bytes;

use super::{codec, compression, Destination, Envelope, EnvelopeError, MessageId, Priority};
use crate::proto;
use crate::topology::{Id, IdError};

impl Envelope {
    /// The wire bytes (protobuf), identical on every transport.
    ///
    /// Written field by field into one buffer of the exact size: going
    /// through [`proto::Envelope`] would copy every id into a `String` and
    /// the payload twice (a fifth of the router's instructions per message,
    /// docs/bench/HISTORY.md). The bytes are those prost writes for
    /// [`Self::to_wire`] (proto3: default scalars left out).
    pub fn encode(&self) -> Bytes {
        let id = self.id.to_bytes();
        let (dest_tag, dest) = match &self.destination {
            Destination::User(u) => (4, u.as_str()),
            Destination::Group(g) => (5, g.as_str()),
        };
        let priority = self.wire_priority() as u64;
        // Two's complement, as protobuf's int64 varint carries negatives.
        let created = self.created_at_micros as u64;
        let ttl = u64::from(self.wire_ttl_ms());
        let len = codec::bytes_len(1, id.len())
            + codec::bytes_len(2, self.sender.as_str().len())
            + codec::bytes_len(3, self.sender_gateway.as_str().len())
            + codec::key_len(dest_tag)
            + codec::varint_len(dest.len() as u64)
            + dest.len()
            + codec::bytes_len(6, self.payload.len())
            + codec::varint_field_len(7, priority)
            + codec::varint_field_len(8, created)
            + codec::varint_field_len(9, ttl)
            + self
                .headers
                .iter()
                .map(|(k, v)| codec::bytes_len(10, codec::entry_len(k, v)))
                .sum::<usize>();
        // A Vec of exactly `len` becomes `Bytes` without a copy.
        let mut buf = Vec::with_capacity(len);
        codec::put_bytes(&mut buf, 1, &id);
        codec::put_bytes(&mut buf, 2, self.sender.as_str().as_bytes());
        codec::put_bytes(&mut buf, 3, self.sender_gateway.as_str().as_bytes());
        // A oneof member is written even when empty.
        codec::put_len_delimited(&mut buf, dest_tag, dest.as_bytes());
        codec::put_bytes(&mut buf, 6, &self.payload);
        codec::put_varint_field(&mut buf, 7, priority);
        codec::put_varint_field(&mut buf, 8, created);
        codec::put_varint_field(&mut buf, 9, ttl);
        for (k, v) in &self.headers {
            codec::put_key(&mut buf, 10, codec::LEN);
            codec::put_varint(&mut buf, codec::entry_len(k, v) as u64);
            codec::put_bytes(&mut buf, 1, k.as_bytes());
            codec::put_bytes(&mut buf, 2, v.as_bytes());
        }
        debug_assert_eq!(buf.len(), len);
        Bytes::from(buf)
    }

    fn wire_priority(&self) -> proto::Priority {
        match self.priority {
            Priority::Low => proto::Priority::Low,
            Priority::Normal => proto::Priority::Normal,
            Priority::High => proto::Priority::High,
        }
    }

    fn wire_ttl_ms(&self) -> u32 {
        self.ttl
            .map(|t| t.as_millis().min(u32::MAX as u128) as u32)
            .unwrap_or(0)
    }

    /// The generated protobuf type (as sent over gRPC).
    pub fn to_wire(&self) -> proto::Envelope {
        proto::Envelope {
            id: self.id.to_bytes().to_vec(),
            sender_user: self.sender.as_str().to_owned(),
            sender_gateway: self.sender_gateway.as_str().to_owned(),
            payload: self.payload.clone(),
            priority: self.wire_priority() as i32,
            created_at_unix_micros: self.created_at_micros,
            ttl_ms: self.wire_ttl_ms(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            destination: Some(match &self.destination {
                Destination::User(u) => proto::envelope::Destination::User(u.as_str().to_owned()),
                Destination::Group(g) => proto::envelope::Destination::Group(g.as_str().to_owned()),
            }),
            // Compression is a transport's business, never the gRPC API's.
            compression: proto::Compression::None as i32,
            compressed: Vec::new(),
        }
    }

    /// Parses wire bytes, compressed ([`compression`]) or not; the payload
    /// shares the input buffer (no copy), and each id is copied once,
    /// straight into its shared string.
    pub fn decode(bytes: Bytes) -> Result<Self, EnvelopeError> {
        let frame = codec::Frame::parse(&bytes).map_err(EnvelopeError::Malformed)?;
        let Some(body) = frame.compressed else {
            return Self::from_frame(frame, &bytes);
        };
        let id = MessageId::from_slice(frame.id)?;
        let inner = compression::unpack(frame.compression, body)
            .map_err(|source| EnvelopeError::Compression { id, source })?;
        let inner = Bytes::from(inner);
        let frame = codec::Frame::parse(&inner).map_err(EnvelopeError::Malformed)?;
        if frame.compressed.is_some() {
            return Err(EnvelopeError::Malformed(format!(
                "envelope {id} is compressed twice"
            )));
        }
        let envelope = Self::from_frame(frame, &inner)?;
        if envelope.id != id {
            return Err(EnvelopeError::Malformed(format!(
                "compressed envelope {id} holds envelope {}",
                envelope.id
            )));
        }
        Ok(envelope)
    }

    /// The envelope `frame` (parsed from `bytes`) describes.
    fn from_frame(frame: codec::Frame<'_>, bytes: &Bytes) -> Result<Self, EnvelopeError> {
        let id = MessageId::from_slice(frame.id)?;
        let text = codec::text;
        let destination = match frame.destination {
            Some((_, b"")) | None => return Err(EnvelopeError::MissingRecipient { id }),
            Some((codec::USER, u)) => Destination::User(id_field(id, "user", text("user", u)?)?),
            Some((_, g)) => Destination::Group(id_field(id, "group", text("group", g)?)?),
        };
        let sender = text("sender_user", frame.sender_user)?;
        let sender_gateway = text("sender_gateway", frame.sender_gateway)?;
        Ok(Self {
            id,
            sender: id_field(id, "sender_user", sender)?,
            sender_gateway: id_field(id, "sender_gateway", sender_gateway)?,
            destination,
            payload: bytes.slice(frame.payload),
            priority: Self::priority_from_wire(frame.priority)?,
            created_at_micros: frame.created_at_unix_micros,
            ttl: (frame.ttl_ms > 0).then(|| Duration::from_millis(u64::from(frame.ttl_ms))),
            headers: frame.headers,
        })
    }

    fn priority_from_wire(priority: i32) -> Result<Priority, EnvelopeError> {
        match proto::Priority::try_from(priority) {
            Ok(proto::Priority::Low) => Ok(Priority::Low),
            Ok(proto::Priority::High) => Ok(Priority::High),
            Ok(proto::Priority::Normal) => Ok(Priority::Normal),
            Err(_) => Err(EnvelopeError::Malformed(format!(
                "unknown priority {priority}"
            ))),
        }
    }

    /// Reads only the message id from wire bytes, for transports that key
    /// broker-side dedupe on it without building the envelope.
    pub fn peek_id(bytes: &[u8]) -> Result<MessageId, EnvelopeError> {
        let frame = codec::Frame::parse(bytes).map_err(EnvelopeError::Malformed)?;
        MessageId::from_slice(frame.id)
    }

    /// Converts the generated protobuf type (as received over gRPC).
    pub fn from_wire(wire: proto::Envelope) -> Result<Self, EnvelopeError> {
        let id = MessageId::from_slice(&wire.id)?;
        use proto::envelope::Destination as To;
        let destination = match wire.destination {
            Some(To::User(u)) if !u.is_empty() => Destination::User(id_field(id, "user", &u)?),
            Some(To::Group(g)) if !g.is_empty() => Destination::Group(id_field(id, "group", &g)?),
            _ => return Err(EnvelopeError::MissingRecipient { id }),
        };
        let priority = Self::priority_from_wire(wire.priority)?;
        Ok(Self {
            id,
            sender: id_field(id, "sender_user", &wire.sender_user)?,
            sender_gateway: id_field(id, "sender_gateway", &wire.sender_gateway)?,
            destination,
            payload: wire.payload,
            priority,
            created_at_micros: wire.created_at_unix_micros,
            ttl: (wire.ttl_ms > 0).then(|| Duration::from_millis(u64::from(wire.ttl_ms))),
            headers: wire.headers.into_iter().collect(),
        })
    }
}

/// An id field of envelope `id` from the wire, held to its rule.
fn id_field<T: Id>(id: MessageId, field: &'static str, value: &str) -> Result<T, EnvelopeError> {
    T::parse(field, value).map_err(|source| match source {
        IdError::Empty { field } => EnvelopeError::EmptyField { id, field },
        source => EnvelopeError::BadId { id, source },
    })
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::envelope::sample;

    #[test]
    fn round_trips_every_field() {
        let env = sample();
        assert_eq!(Envelope::decode(env.encode()).unwrap(), env);
        let group = Envelope::new(
            "alice",
            "gw-1",
            Destination::Group("g1".into()),
            vec![0u8; 300],
        );
        assert_eq!(Envelope::decode(group.encode()).unwrap(), group);
    }

    #[test]
    fn writes_what_prost_writes_and_reads_what_prost_writes() {
        let mut low = sample().with_priority(Priority::Low);
        low.created_at_micros = -5;
        low.headers.insert(String::new(), "v".into());
        low.headers.insert("k".into(), String::new());
        let empty = Envelope::new("a", "g", Destination::User("u".into()), "");
        let group = Envelope::new("é", "gw-2", Destination::Group("g1".into()), vec![1; 200]);
        for env in [sample(), low, empty, group] {
            let ours = env.encode();
            let prost_bytes = env.to_wire().encode_to_vec();
            assert_eq!(
                proto::Envelope::decode(ours.clone()).unwrap(),
                env.to_wire()
            );
            // prost writes a map in its HashMap's order: bytes match up to one entry.
            if env.headers.len() <= 1 {
                assert_eq!(ours.as_ref(), prost_bytes.as_slice(), "{env:?}");
            }
            assert_eq!(Envelope::decode(Bytes::from(prost_bytes)).unwrap(), env);
        }
    }

    #[test]
    fn reads_every_truncation_as_prost_does() {
        // Cut inside a field: an error; cut between fields: a shorter
        // message. Never a panic, and the same verdict as prost's.
        let env = sample();
        let bytes = env.encode();
        for end in 0..bytes.len() {
            let cut = bytes.slice(..end);
            let ours = Envelope::decode(cut.clone());
            let theirs = proto::Envelope::decode(cut).map(Envelope::from_wire);
            match (ours, theirs) {
                (Ok(a), Ok(Ok(b))) => assert_eq!(a, b, "cut at {end}"),
                (Err(_), Err(_) | Ok(Err(_))) => {}
                (a, b) => panic!("cut at {end}: ours {a:?}, prost {b:?}"),
            }
        }
        // An unknown field (tag 15, varint and length-delimited) is skipped.
        let mut extended = bytes.to_vec();
        extended.extend_from_slice(&[15 << 3, 1, (15 << 3) | 2, 2, b'x', b'y']);
        assert_eq!(Envelope::decode(Bytes::from(extended)).unwrap(), env);
    }

    #[test]
    fn ids_must_be_utf8() {
        let mut wire = sample().to_wire().encode_to_vec();
        // The sender's text ("alice") follows its key and length: break it.
        let at = wire.windows(5).position(|w| w == b"alice").unwrap();
        wire[at] = 0xff;
        let err = Envelope::decode(Bytes::from(wire)).unwrap_err();
        assert!(
            matches!(&err, EnvelopeError::Malformed(m) if m == "field `sender_user` is not UTF-8"),
            "{err:?}"
        );
    }

    #[test]
    fn peek_id_reads_the_id_alone() {
        let env = sample();
        assert_eq!(Envelope::peek_id(&env.encode()).unwrap(), env.id);
        assert!(Envelope::peek_id(b"\xff\xff garbage").is_err());
    }

    #[test]
    fn ids_off_the_wire_are_held_to_their_rules() {
        let good = sample().to_wire();
        let decode = |wire: proto::Envelope| Envelope::decode(Bytes::from(wire.encode_to_vec()));
        let bad_sender = proto::Envelope {
            sender_user: "eve\u{1f}x".into(),
            ..good.clone()
        };
        for err in [
            decode(bad_sender.clone()).unwrap_err(),
            Envelope::from_wire(bad_sender).unwrap_err(),
        ] {
            assert!(
                matches!(
                    &err,
                    EnvelopeError::BadId {
                        source: IdError::BadCharacter {
                            field: "sender_user",
                            at: 3,
                            ..
                        },
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        let dotted_gateway = proto::Envelope {
            sender_gateway: "gw.1".into(),
            ..good.clone()
        };
        assert!(matches!(
            decode(dotted_gateway).unwrap_err(),
            EnvelopeError::BadId {
                source: IdError::BadCharacter {
                    field: "sender_gateway",
                    ..
                },
                ..
            }
        ));
        let no_sender = proto::Envelope {
            sender_user: String::new(),
            ..good.clone()
        };
        assert!(matches!(
            Envelope::from_wire(no_sender).unwrap_err(),
            EnvelopeError::EmptyField {
                field: "sender_user",
                ..
            }
        ));
        let empty_recipient = proto::Envelope {
            destination: Some(proto::envelope::Destination::User(String::new())),
            ..good
        };
        for err in [
            decode(empty_recipient.clone()).unwrap_err(),
            Envelope::from_wire(empty_recipient).unwrap_err(),
        ] {
            assert!(
                matches!(err, EnvelopeError::MissingRecipient { .. }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn malformed_bytes_are_an_error_not_a_panic() {
        let err = Envelope::decode(Bytes::from_static(b"\xff\xff\xff garbage")).unwrap_err();
        assert!(matches!(err, EnvelopeError::Malformed(_)), "{err}");
        let no_dest = proto::Envelope {
            id: MessageId::new().to_bytes().to_vec(),
            ..Default::default()
        };
        let err = Envelope::decode(Bytes::from(no_dest.encode_to_vec())).unwrap_err();
        assert!(matches!(err, EnvelopeError::MissingRecipient { .. }));
        let short_id = proto::Envelope {
            id: vec![1, 2, 3],
            ..Default::default()
        };
        let err = Envelope::decode(Bytes::from(short_id.encode_to_vec())).unwrap_err();
        assert!(
            matches!(err, EnvelopeError::BadMessageId { len: 3 }),
            "{err:?}"
        );
    }
}
