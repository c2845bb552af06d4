//! The message in flight: [`Envelope`], its [`MessageId`], [`Priority`] and
//! [`Destination`], and the protobuf codec shared by every transport.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use ulid::Ulid;

pub mod compression;

use crate::proto;
use crate::topology::{check, GatewayId, GroupId, IdError, IdKind, UserId};

/// Unique, time-ordered message id (a ULID). Receivers dedupe on it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(Ulid);

impl MessageId {
    /// A fresh id, ordered after every id made earlier by this process.
    pub fn new() -> Self {
        // One generator per process keeps ids monotonic within a millisecond.
        static GENERATOR: LazyLock<Mutex<ulid::Generator>> =
            LazyLock::new(|| Mutex::new(ulid::Generator::new()));
        let next = GENERATOR.lock().generate();
        // Overflow needs 2^80 ids in one millisecond; a random id is still unique.
        Self(next.unwrap_or_else(|_| Ulid::new()))
    }

    /// The 16 raw bytes, as carried on the wire.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_bytes()
    }

    /// Parses the 16 raw bytes carried on the wire.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let raw: [u8; 16] = bytes
            .try_into()
            .map_err(|_| EnvelopeError::BadMessageId { len: bytes.len() })?;
        Ok(Self(Ulid::from_bytes(raw)))
    }

    /// The underlying ULID.
    pub fn ulid(self) -> Ulid {
        self.0
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

impl std::str::FromStr for MessageId {
    type Err = ulid::DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ulid::from_string(s).map(Self)
    }
}

/// Delivery effort, chosen by the sender per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Priority {
    /// Fire-and-forget: the router does not wait for the broker.
    Low,
    /// Wait for the transport's acknowledgement once, then fall back.
    #[default]
    Normal,
    /// Wait for the acknowledgement, retry with backoff, then fall back.
    High,
}

impl Priority {
    /// The lower-case name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

/// Who a message is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// One user, on every device where they are online.
    User(UserId),
    /// Every online member of a group.
    Group(GroupId),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::User(user) => write!(f, "{user}"),
            Destination::Group(group) => write!(f, "group:{group}"),
        }
    }
}

/// One message between users, or from a user to a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique, time-ordered id; stamped by the router when not set by the sender.
    pub id: MessageId,
    /// The sending user.
    pub sender: UserId,
    /// The gateway the sender is connected to.
    pub sender_gateway: GatewayId,
    /// The recipient user or group.
    pub destination: Destination,
    /// Opaque application payload.
    pub payload: Bytes,
    /// Delivery effort.
    pub priority: Priority,
    /// Creation time, microseconds since the Unix epoch.
    pub created_at_micros: i64,
    /// Time to live after creation; `None` means no limit.
    pub ttl: Option<Duration>,
    /// Free-form application headers.
    pub headers: BTreeMap<String, String>,
}

/// What is wrong with an envelope, named precisely enough to fix it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// No recipient user or group.
    #[error("envelope {id} has no recipient (set a user or a group)")]
    MissingRecipient {
        /// The message id.
        id: MessageId,
    },
    /// A required identifier is empty.
    #[error("envelope {id}: field `{field}` is empty")]
    EmptyField {
        /// The message id.
        id: MessageId,
        /// The empty field's name.
        field: &'static str,
    },
    /// An identifier breaks its rule (see [`crate::topology`]).
    #[error("envelope {id}: {source}")]
    BadId {
        /// The message id.
        id: MessageId,
        /// Which field and rule.
        source: IdError,
    },
    /// The payload and headers are over the configured limit.
    #[error(
        "envelope {id}: payload and headers are {size} bytes, over the limit of {limit} bytes"
    )]
    PayloadTooLarge {
        /// The message id.
        id: MessageId,
        /// The payload and headers (keys and values) in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The time to live ran out before the message could be routed.
    #[error("envelope {id} expired {late_ms} ms ago (ttl {ttl_ms} ms)")]
    Expired {
        /// The message id.
        id: MessageId,
        /// The time to live in milliseconds.
        ttl_ms: u64,
        /// How long ago it expired, in milliseconds.
        late_ms: u64,
    },
    /// Created further in the future than clock skew explains; its TTL
    /// and the offline store's age trimming would never apply.
    #[error("envelope {id}: created_at is {ahead_ms} ms in the future (more than the {MAX_CLOCK_SKEW:?} allowed for clock skew)")]
    FromTheFuture {
        /// The message id.
        id: MessageId,
        /// How far ahead of this node's clock, in milliseconds.
        ahead_ms: u64,
    },
    /// The message id is not 16 bytes.
    #[error("message id must be 16 bytes, got {len}")]
    BadMessageId {
        /// The length received.
        len: usize,
    },
    /// The bytes are not an envelope at all.
    #[error("malformed envelope bytes: {0}")]
    Malformed(String),
    /// A compressed envelope whose body does not open.
    #[error("envelope {id}: {source}")]
    Compression {
        /// The message id (from the outer envelope).
        id: MessageId,
        /// Why the body does not open.
        source: compression::CompressionError,
    },
}

/// How far in the future a `created_at` may lie (senders' clocks drift).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

impl Envelope {
    /// A new message with a fresh id, stamped now, normal priority.
    pub fn new(
        sender: impl Into<UserId>,
        sender_gateway: impl Into<GatewayId>,
        destination: Destination,
        payload: impl Into<Bytes>,
    ) -> Self {
        Self {
            id: MessageId::new(),
            sender: sender.into(),
            sender_gateway: sender_gateway.into(),
            destination,
            payload: payload.into(),
            priority: Priority::Normal,
            created_at_micros: now_micros(),
            ttl: None,
            headers: BTreeMap::new(),
        }
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the time to live.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Checks what the router needs before it routes anything.
    pub fn validate(&self, max_payload: usize, now_micros: i64) -> Result<(), EnvelopeError> {
        let id = self.id;
        let (to_field, to) = match &self.destination {
            Destination::User(u) => ("user", u.as_str()),
            Destination::Group(g) => ("group", g.as_str()),
        };
        if to.is_empty() {
            return Err(EnvelopeError::MissingRecipient { id });
        }
        for (field, kind, value) in [
            ("sender_user", IdKind::Text, self.sender.as_str()),
            ("sender_gateway", IdKind::Name, self.sender_gateway.as_str()),
            (to_field, IdKind::Text, to),
        ] {
            check(field, kind, value).map_err(|source| match source {
                IdError::Empty { field } => EnvelopeError::EmptyField { id, field },
                source => EnvelopeError::BadId { id, source },
            })?;
        }
        let size = self.size();
        if size > max_payload {
            return Err(EnvelopeError::PayloadTooLarge {
                id,
                size,
                limit: max_payload,
            });
        }
        let ahead = self.created_at_micros.saturating_sub(now_micros);
        if ahead > MAX_CLOCK_SKEW.as_micros() as i64 {
            return Err(EnvelopeError::FromTheFuture {
                id,
                ahead_ms: (ahead / 1000) as u64,
            });
        }
        self.check_ttl(now_micros)
    }

    /// What a receiver checks of a message from the wire: it was validated
    /// by its sender (possibly an older version, possibly with another
    /// clock), so only what makes it undeliverable here is refused: no
    /// sender or recipient, or its time to live ran out.
    pub fn check_arrival(&self, now_micros: i64) -> Result<(), EnvelopeError> {
        let id = self.id;
        let to = match &self.destination {
            Destination::User(u) => u.as_str(),
            Destination::Group(g) => g.as_str(),
        };
        if to.is_empty() {
            return Err(EnvelopeError::MissingRecipient { id });
        }
        for (field, value) in [
            ("sender_user", self.sender.as_str()),
            ("sender_gateway", self.sender_gateway.as_str()),
        ] {
            if value.is_empty() {
                return Err(EnvelopeError::EmptyField { id, field });
            }
        }
        self.check_ttl(now_micros)
    }

    fn check_ttl(&self, now_micros: i64) -> Result<(), EnvelopeError> {
        let Some(ttl) = self.ttl else { return Ok(()) };
        let age_micros = now_micros.saturating_sub(self.created_at_micros).max(0) as u128;
        if age_micros > ttl.as_micros() {
            return Err(EnvelopeError::Expired {
                id: self.id,
                ttl_ms: ttl.as_millis() as u64,
                late_ms: ((age_micros - ttl.as_micros()) / 1000) as u64,
            });
        }
        Ok(())
    }

    /// What `limits.max_payload_bytes` bounds: the payload and every
    /// header's key and value.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// The wire bytes (protobuf), identical on every transport.
    ///
    /// Written field by field into one buffer of the exact size: going
    /// through [`proto::Envelope`] would copy every id into a `String` and
    /// the payload twice (a fifth of the router's instructions per message,
    /// docs/BENCHMARKS.md). The bytes are those prost writes for
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
            Some((codec::USER, u)) => Destination::User(text("user", u)?.into()),
            Some((_, g)) => Destination::Group(text("group", g)?.into()),
            None => return Err(EnvelopeError::MissingRecipient { id }),
        };
        Ok(Self {
            id,
            sender: text("sender_user", frame.sender_user)?.into(),
            sender_gateway: text("sender_gateway", frame.sender_gateway)?.into(),
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
        let destination = match wire.destination {
            Some(proto::envelope::Destination::User(u)) => Destination::User(u.into()),
            Some(proto::envelope::Destination::Group(g)) => Destination::Group(g.into()),
            None => return Err(EnvelopeError::MissingRecipient { id }),
        };
        let priority = Self::priority_from_wire(wire.priority)?;
        Ok(Self {
            id,
            sender: wire.sender_user.into(),
            sender_gateway: wire.sender_gateway.into(),
            destination,
            payload: wire.payload,
            priority,
            created_at_micros: wire.created_at_unix_micros,
            ttl: (wire.ttl_ms > 0).then(|| Duration::from_millis(u64::from(wire.ttl_ms))),
            headers: wire.headers.into_iter().collect(),
        })
    }
}

/// The protobuf wire format of [`proto::Envelope`], written and read
/// without its generated type's copies.
mod codec {
    use std::collections::BTreeMap;

    /// Wire type of varints.
    const VARINT: u32 = 0;
    /// Wire type of length-delimited fields.
    pub(super) const LEN: u32 = 2;

    /// The destination tag of a user recipient (5 is a group).
    pub(super) const USER: u32 = 4;

    /// `proto::Envelope` as read off the wire: every length-delimited field
    /// a slice of the input, nothing copied but the headers. Parsed by hand
    /// (prost's generated decoder costs four times as many instructions
    /// here); read what switchyard wrote, with protobuf's rules: unknown
    /// fields skipped, the last value of a field wins, map entries merge.
    /// Groups (deprecated, never written by switchyard) are refused.
    #[derive(Debug, Default)]
    pub(super) struct Frame<'a> {
        pub(super) id: &'a [u8],
        pub(super) sender_user: &'a [u8],
        pub(super) sender_gateway: &'a [u8],
        /// The oneof's tag ([`USER`] or 5) and value.
        pub(super) destination: Option<(u32, &'a [u8])>,
        /// Where the payload is in the input (to slice it without a copy).
        pub(super) payload: std::ops::Range<usize>,
        pub(super) priority: i32,
        pub(super) created_at_unix_micros: i64,
        pub(super) ttl_ms: u32,
        pub(super) headers: BTreeMap<String, String>,
        /// The codec of a compressed envelope (field 11).
        pub(super) compression: u64,
        /// A compressed envelope's body (field 12): the rest is in there.
        pub(super) compressed: Option<&'a [u8]>,
    }

    /// A cursor over protobuf fields.
    struct Fields<'a> {
        buf: &'a [u8],
        at: usize,
    }

    /// One field's value.
    enum Value<'a> {
        Varint(u64),
        /// Length-delimited, with its offset in the input.
        Len(&'a [u8], usize),
        /// Fixed 32 or 64 bits: skipped.
        Fixed,
    }

    impl<'a> Fields<'a> {
        fn varint(&mut self) -> Result<u64, String> {
            let mut value = 0u64;
            for shift in (0..64).step_by(7) {
                let byte = *self.buf.get(self.at).ok_or("truncated varint")?;
                self.at += 1;
                value |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return Ok(value);
                }
            }
            Err("varint longer than 10 bytes".into())
        }

        fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
            let end = self.at.checked_add(len).filter(|&e| e <= self.buf.len());
            let end = end.ok_or_else(|| format!("field of {len} bytes past the end"))?;
            let taken = &self.buf[self.at..end];
            self.at = end;
            Ok(taken)
        }

        /// The next field's tag and value; `None` at the end.
        fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, String> {
            if self.at == self.buf.len() {
                return Ok(None);
            }
            let key = self.varint()?;
            let tag = u32::try_from(key >> 3).map_err(|_| format!("tag {} too large", key >> 3))?;
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Value::Fixed
                }
                2 => {
                    let len = usize::try_from(self.varint()?).map_err(|e| e.to_string())?;
                    let offset = self.at;
                    Value::Len(self.take(len)?, offset)
                }
                5 => {
                    self.take(4)?;
                    Value::Fixed
                }
                wire => return Err(format!("wire type {wire} of field {tag} is not supported")),
            };
            Ok(Some((tag, value)))
        }
    }

    impl<'a> Frame<'a> {
        /// Parses an encoded `proto::Envelope`.
        pub(super) fn parse(buf: &'a [u8]) -> Result<Self, String> {
            let mut frame = Frame::default();
            let mut fields = Fields { buf, at: 0 };
            while let Some((tag, value)) = fields.next()? {
                match (tag, value) {
                    (1, Value::Len(b, _)) => frame.id = b,
                    (2, Value::Len(b, _)) => frame.sender_user = b,
                    (3, Value::Len(b, _)) => frame.sender_gateway = b,
                    (4 | 5, Value::Len(b, _)) => frame.destination = Some((tag, b)),
                    (6, Value::Len(b, at)) => frame.payload = at..at + b.len(),
                    // Protobuf truncates a varint to the field's width.
                    (7, Value::Varint(v)) => frame.priority = v as i32,
                    (8, Value::Varint(v)) => frame.created_at_unix_micros = v as i64,
                    (9, Value::Varint(v)) => frame.ttl_ms = v as u32,
                    (10, Value::Len(b, _)) => {
                        let (k, v) = entry(b)?;
                        frame.headers.insert(k, v);
                    }
                    (11, Value::Varint(v)) => frame.compression = v,
                    (12, Value::Len(b, _)) => frame.compressed = Some(b),
                    (1..=12, _) => return Err(format!("field {tag} has the wrong wire type")),
                    _ => {}
                }
            }
            Ok(frame)
        }
    }

    /// One `headers` map entry (key = 1, value = 2).
    fn entry(buf: &[u8]) -> Result<(String, String), String> {
        let (mut key, mut value) = (String::new(), String::new());
        let mut fields = Fields { buf, at: 0 };
        while let Some((tag, field)) = fields.next()? {
            match (tag, field) {
                (1, Value::Len(b, _)) => {
                    key = text("header key", b).map_err(|e| e.to_string())?.into()
                }
                (2, Value::Len(b, _)) => {
                    value = text("header value", b).map_err(|e| e.to_string())?.into()
                }
                (1 | 2, _) => return Err(format!("header field {tag} has the wrong wire type")),
                _ => {}
            }
        }
        Ok((key, value))
    }

    /// A string field's bytes as text.
    pub(super) fn text<'a>(
        field: &'static str,
        b: &'a [u8],
    ) -> Result<&'a str, super::EnvelopeError> {
        std::str::from_utf8(b)
            .map_err(|_| super::EnvelopeError::Malformed(format!("field `{field}` is not UTF-8")))
    }

    pub(super) fn varint_len(v: u64) -> usize {
        // 7 bits per byte; 0 still takes one byte.
        (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }

    pub(super) fn key_len(tag: u32) -> usize {
        varint_len(u64::from(tag << 3))
    }

    /// A length-delimited field of `len` bytes, left out when empty.
    pub(super) fn bytes_len(tag: u32, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            key_len(tag) + varint_len(len as u64) + len
        }
    }

    /// A varint field, left out when 0.
    pub(super) fn varint_field_len(tag: u32, v: u64) -> usize {
        if v == 0 {
            0
        } else {
            key_len(tag) + varint_len(v)
        }
    }

    /// The body of one `headers` map entry (key = 1, value = 2).
    pub(super) fn entry_len(k: &str, v: &str) -> usize {
        bytes_len(1, k.len()) + bytes_len(2, v.len())
    }

    pub(super) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    pub(super) fn put_key(buf: &mut Vec<u8>, tag: u32, wire_type: u32) {
        put_varint(buf, u64::from(tag << 3 | wire_type));
    }

    pub(super) fn put_len_delimited(buf: &mut Vec<u8>, tag: u32, b: &[u8]) {
        put_key(buf, tag, LEN);
        put_varint(buf, b.len() as u64);
        buf.extend_from_slice(b);
    }

    /// A length-delimited field, left out when empty.
    pub(super) fn put_bytes(buf: &mut Vec<u8>, tag: u32, b: &[u8]) {
        if !b.is_empty() {
            put_len_delimited(buf, tag, b);
        }
    }

    /// The length of a compressed envelope: id, codec and a body of `body` bytes.
    pub(super) fn compressed_len(id: &[u8; 16], codec: u64, body: usize) -> usize {
        bytes_len(1, id.len()) + varint_field_len(11, codec) + bytes_len(12, body)
    }

    /// Writes a compressed envelope (see [`super::compression`]).
    pub(super) fn put_compressed(buf: &mut Vec<u8>, id: &[u8; 16], codec: u64, body: &[u8]) {
        put_bytes(buf, 1, id);
        put_varint_field(buf, 11, codec);
        put_bytes(buf, 12, body);
    }

    /// A varint field, left out when 0.
    pub(super) fn put_varint_field(buf: &mut Vec<u8>, tag: u32, v: u64) {
        if v != 0 {
            put_key(buf, tag, VARINT);
            put_varint(buf, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn sample() -> Envelope {
        let mut env = Envelope::new("alice", "gw-1", Destination::User("bob".into()), "hi")
            .with_priority(Priority::High)
            .with_ttl(Duration::from_secs(30));
        env.headers.insert("trace".into(), "abc".into());
        env
    }

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
        let empty_user = Envelope::new("a", "g", Destination::User("".into()), "");
        let group = Envelope::new("é", "gw-2", Destination::Group("g1".into()), vec![1; 200]);
        for env in [sample(), low, empty_user, group] {
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
        assert_eq!(
            err,
            EnvelopeError::Malformed("field `sender_user` is not UTF-8".into())
        );
    }

    #[test]
    fn peek_id_reads_the_id_alone() {
        let env = sample();
        assert_eq!(Envelope::peek_id(&env.encode()).unwrap(), env.id);
        assert!(Envelope::peek_id(b"\xff\xff garbage").is_err());
    }

    #[test]
    fn ids_are_time_ordered_and_unique() {
        let ids: Vec<_> = (0..1000).map(|_| MessageId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
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
        assert_eq!(err, EnvelopeError::BadMessageId { len: 3 });
    }

    #[test]
    fn ids_headers_and_clocks_are_held_to_their_limits() {
        let now = now_micros();
        let mut env = Envelope::new("eve\u{1f}x", "gw-1", Destination::User("bob".into()), "hi");
        assert!(matches!(
            env.validate(1024, now),
            Err(EnvelopeError::BadId {
                source: IdError::BadCharacter {
                    field: "sender_user",
                    ..
                },
                ..
            })
        ));
        env.sender = "eve".into();
        env.headers.insert("big".into(), "x".repeat(2000));
        assert!(matches!(
            env.validate(1024, now),
            Err(EnvelopeError::PayloadTooLarge { size: 2005, .. })
        ));
        env.headers.clear();
        env.created_at_micros = now + 3_600_000_000;
        let err = env.validate(1024, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("envelope {}: created_at is 3600000 ms in the future (more than the 300s allowed for clock skew)", env.id)
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let env = sample();
        let now = env.created_at_micros;
        assert!(env.validate(1024, now).is_ok());

        let err = env.validate(1, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "envelope {}: payload and headers are 10 bytes, over the limit of 1 bytes",
                env.id
            )
        );

        let mut empty = sample();
        empty.sender = "".into();
        assert!(matches!(
            empty.validate(1024, now),
            Err(EnvelopeError::EmptyField {
                field: "sender_user",
                ..
            })
        ));

        let mut nobody = sample();
        nobody.destination = Destination::User("".into());
        assert!(matches!(
            nobody.validate(1024, now),
            Err(EnvelopeError::MissingRecipient { .. })
        ));

        let late = now + 31_000_000;
        assert!(matches!(
            env.validate(1024, late),
            Err(EnvelopeError::Expired { late_ms: 1000, .. })
        ));
    }
}
