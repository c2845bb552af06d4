//! Who is where: identifiers for users, groups, gateways and regions, the
//! rules every identifier is held to, and what the router knows about a
//! gateway.
//!
//! Identifiers end up in Redis keys and values, NATS subjects, Kafka topic
//! names and logs, so they are checked where they enter (the Gateway API,
//! envelope decoding, the router's calls) by [`check`]:
//!
//! | kind | bytes | characters |
//! |---|---|---|
//! | user, group, device | 1-256 | any UTF-8 but control characters |
//! | gateway, region | 1-64 | ASCII letters, digits, `-`, `_` |

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Declares a cheap-to-clone string identifier.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a string as this identifier.
            pub fn new(id: impl AsRef<str>) -> Self {
                Self(Arc::from(id.as_ref()))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self::new(id)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(Arc::from(id))
            }
        }
    };
}

id_type!(
    /// A user of the chat platform.
    UserId
);
id_type!(
    /// A group (room, channel) of users.
    GroupId
);
id_type!(
    /// A gateway process that holds user connections.
    GatewayId
);
id_type!(
    /// A deployment region; crossing regions changes the route.
    Region
);
id_type!(
    /// One device (connection) of a user; a user may have several.
    DeviceId
);

/// Longest user, group or device id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest gateway id or region, in bytes (a Kafka topic name or NATS
/// subject token is built from a gateway id).
pub const MAX_NAME_BYTES: usize = 64;

/// Which identifier a value is, and so which rule it is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A user, group or device id: free text without control characters.
    Text,
    /// A gateway id or region: a name that fits a topic or subject.
    Name,
}

/// An identifier that breaks its rule, named by the field it came in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Nothing was given.
    #[error("`{field}` is empty")]
    Empty {
        /// The request field.
        field: &'static str,
    },
    /// Over the length limit.
    #[error("`{field}` is {len} bytes, over the limit of {max}")]
    TooLong {
        /// The request field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A character the rule does not allow.
    #[error("`{field}` has {found:?} at byte {at}: {allowed}")]
    BadCharacter {
        /// The request field.
        field: &'static str,
        /// The character.
        found: char,
        /// Its byte offset.
        at: usize,
        /// What is allowed instead.
        allowed: &'static str,
    },
}

/// Checks `value`, the request field `field`, against the rule of `kind`.
pub fn check(field: &'static str, kind: IdKind, value: &str) -> Result<(), IdError> {
    let (max, allowed) = match kind {
        IdKind::Text => (MAX_ID_BYTES, "control characters are not allowed"),
        IdKind::Name => (
            MAX_NAME_BYTES,
            "only ASCII letters, digits, `-` and `_` are allowed",
        ),
    };
    if value.is_empty() {
        return Err(IdError::Empty { field });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    // Every id of every message passes here: the common case (ASCII that
    // passes) is one pass over the bytes without an early exit, which the
    // compiler vectorizes; only a failing or non-ASCII id is scanned again
    // to find the offending character.
    let bad = match kind {
        IdKind::Text if all_bytes(value, |b| (0x20..0x7f).contains(&b)) => None,
        IdKind::Text => value
            .char_indices()
            .find(|(_, c)| c.is_control())
            .map(|(at, _)| at),
        IdKind::Name if all_bytes(value, name_byte) => None,
        IdKind::Name => value.bytes().position(|b| !name_byte(b)),
    };
    match bad.and_then(|at| Some((at, value[at..].chars().next()?))) {
        Some((at, found)) => Err(IdError::BadCharacter {
            field,
            found,
            at,
            allowed,
        }),
        None => Ok(()),
    }
}

/// A byte a gateway id or region may hold.
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() | (b == b'-') | (b == b'_')
}

/// Whether every byte of `value` passes `ok`, folded without an early exit.
fn all_bytes(value: &str, ok: impl Fn(u8) -> bool) -> bool {
    value.bytes().fold(true, |all, b| all & ok(b))
}

/// What the router knows about a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    /// Unique gateway id.
    pub id: GatewayId,
    /// The region the gateway runs in.
    pub region: Region,
    /// Where its sidecar accepts peer links (`host:port`); empty in library mode.
    pub address: String,
}

impl GatewayInfo {
    /// A gateway with no peer address (library mode).
    pub fn new(id: impl Into<GatewayId>, region: impl Into<Region>) -> Self {
        Self {
            id: id.into(),
            region: region.into(),
            address: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_text_without_control_characters() {
        assert_eq!(
            check("user", IdKind::Text, "alice@example.com ü 😀"),
            Ok(())
        );
        assert_eq!(
            check("user", IdKind::Text, "bob\u{1f}x"),
            Err(IdError::BadCharacter {
                field: "user",
                found: '\u{1f}',
                at: 3,
                allowed: "control characters are not allowed"
            })
        );
        assert_eq!(
            check("device", IdKind::Text, ""),
            Err(IdError::Empty { field: "device" })
        );
        let long = "u".repeat(MAX_ID_BYTES + 1);
        assert_eq!(
            check("user", IdKind::Text, &long).map_err(|e| e.to_string()),
            Err("`user` is 257 bytes, over the limit of 256".into())
        );
    }

    #[test]
    fn gateway_ids_and_regions_fit_a_topic_name() {
        assert_eq!(check("gateway_id", IdKind::Name, "gw-eu_1"), Ok(()));
        for bad in ["eu\u{1f}x", "gw.1", "gw 1", "gw/1", "gw*"] {
            assert!(check("region", IdKind::Name, bad).is_err(), "{bad:?}");
        }
    }
}
