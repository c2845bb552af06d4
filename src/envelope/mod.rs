//! The message in flight: [`Envelope`], its [`MessageId`], [`Priority`] and
//! [`Destination`]. The wire format every transport carries is in `wire`
//! (with `codec`, its protobuf reader and writer); `compression` packs
//! large envelopes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use ulid::Ulid;

mod codec;
pub mod compression;
mod error;
mod wire;

pub use error::EnvelopeError;

use crate::topology::{GatewayId, GroupId, UserId};

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

    /// Checks what the router needs before it routes anything (the ids
    /// were checked when they were made).
    pub fn validate(&self, max_payload: usize, now_micros: i64) -> Result<(), EnvelopeError> {
        let id = self.id;
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
    /// by its sender (possibly with another clock) and its ids by decoding,
    /// so only what makes it undeliverable here is refused: its time to
    /// live ran out.
    pub fn check_arrival(&self, now_micros: i64) -> Result<(), EnvelopeError> {
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
}

/// A message from alice to bob with a header, high priority and a TTL.
#[cfg(test)]
pub(crate) fn sample() -> Envelope {
    let mut env = Envelope::new("alice", "gw-1", Destination::User("bob".into()), "hi")
        .with_priority(Priority::High)
        .with_ttl(Duration::from_secs(30));
    env.headers.insert("trace".into(), "abc".into());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered_and_unique() {
        let ids: Vec<_> = (0..1000).map(|_| MessageId::new()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
    }

    #[test]
    fn headers_and_clocks_are_held_to_their_limits() {
        let now = now_micros();
        let mut env = Envelope::new("eve", "gw-1", Destination::User("bob".into()), "hi");
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

        let late = now + 31_000_000;
        assert!(matches!(
            env.validate(1024, late),
            Err(EnvelopeError::Expired { late_ms: 1000, .. })
        ));
    }
}
