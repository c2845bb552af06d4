//! The message in flight: [`Envelope`], its [`MessageId`], [`Priority`] and
//! [`Destination`], and the protobuf codec shared by every transport.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message as _;
use ulid::Ulid;

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
    pub fn encode(&self) -> Bytes {
        Bytes::from(self.to_wire().encode_to_vec())
    }

    /// The generated protobuf type (as sent over gRPC).
    pub fn to_wire(&self) -> proto::Envelope {
        proto::Envelope {
            id: self.id.to_bytes().to_vec(),
            sender_user: self.sender.as_str().to_owned(),
            sender_gateway: self.sender_gateway.as_str().to_owned(),
            payload: self.payload.clone(),
            priority: match self.priority {
                Priority::Low => proto::Priority::Low,
                Priority::Normal => proto::Priority::Normal,
                Priority::High => proto::Priority::High,
            } as i32,
            created_at_unix_micros: self.created_at_micros,
            ttl_ms: self
                .ttl
                .map(|t| t.as_millis().min(u32::MAX as u128) as u32)
                .unwrap_or(0),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            destination: Some(match &self.destination {
                Destination::User(u) => proto::envelope::Destination::User(u.as_str().to_owned()),
                Destination::Group(g) => proto::envelope::Destination::Group(g.as_str().to_owned()),
            }),
        }
    }

    /// Parses wire bytes; the payload shares the input buffer (no copy).
    pub fn decode(bytes: Bytes) -> Result<Self, EnvelopeError> {
        let wire =
            proto::Envelope::decode(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        Self::from_wire(wire)
    }

    /// Reads only the message id from wire bytes, skipping the payload, for
    /// transports that key broker-side dedupe on it without decoding the rest.
    pub fn peek_id(bytes: &[u8]) -> Result<MessageId, EnvelopeError> {
        /// Field 1 of `proto::Envelope`; prost skips every other field.
        #[derive(Clone, PartialEq, prost::Message)]
        struct IdOnly {
            #[prost(bytes = "vec", tag = "1")]
            id: Vec<u8>,
        }
        let only = IdOnly::decode(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        MessageId::from_slice(&only.id)
    }

    /// Converts the generated protobuf type (as received over gRPC).
    pub fn from_wire(wire: proto::Envelope) -> Result<Self, EnvelopeError> {
        let id = MessageId::from_slice(&wire.id)?;
        let destination = match wire.destination {
            Some(proto::envelope::Destination::User(u)) => Destination::User(u.into()),
            Some(proto::envelope::Destination::Group(g)) => Destination::Group(g.into()),
            None => return Err(EnvelopeError::MissingRecipient { id }),
        };
        let priority = match proto::Priority::try_from(wire.priority) {
            Ok(proto::Priority::Low) => Priority::Low,
            Ok(proto::Priority::High) => Priority::High,
            Ok(proto::Priority::Normal) => Priority::Normal,
            Err(_) => {
                return Err(EnvelopeError::Malformed(format!(
                    "unknown priority {}",
                    wire.priority
                )))
            }
        };
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

#[cfg(test)]
mod tests {
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
