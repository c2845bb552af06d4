//! Who is where: identifiers for users, groups, gateways and regions, the
//! rules every identifier is held to, and what the router knows about a
//! gateway.
//!
//! Identifiers end up in Redis keys and values, NATS subjects, Kafka topic
//! names and logs, so an identifier cannot be made without passing its
//! rule: `parse(field, text)`, `TryFrom<String>`, `str::parse` and serde
//! all check, and fail with an [`IdError`] naming the field. Only a
//! `&'static str` converts with `From`, for literals in code, and a bad
//! literal panics. The rules:
//!
//! | kind | bytes | characters |
//! |---|---|---|
//! | user, group, device | 1-256 | any UTF-8 but control characters |
//! | gateway, region | 1-64 | ASCII letters, digits, `-`, `_` |

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What the edges that take ids (gRPC fields, envelope decoding) make
/// them with, whichever id a field holds.
pub(crate) trait Id: Sized {
    /// Checks `value`, which came in as the field `field`, and wraps it.
    fn parse(field: &'static str, value: &str) -> Result<Self, IdError>;
}

/// Declares a cheap-to-clone string identifier held to the rule of
/// `$kind`: every way of making one from text checks it, so an invalid id
/// cannot exist past the edge it came in at.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Checks `value`, which came in as the field `field`, and wraps it.
            pub fn parse(field: &'static str, value: &str) -> Result<Self, IdError> {
                check(field, $kind, value)?;
                Ok(Self(Arc::from(value)))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Id for $name {
            fn parse(field: &'static str, value: &str) -> Result<Self, IdError> {
                $name::parse(field, value)
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

        /// For literals in code, like `http::HeaderName::from_static`:
        /// panics if the literal breaks the rule. Text from input goes
        /// through [`parse`](Self::parse), `try_from` or `str::parse`.
        impl From<&'static str> for $name {
            #[track_caller]
            fn from(id: &'static str) -> Self {
                match Self::parse($field, id) {
                    Ok(id) => id,
                    Err(err) => panic!("invalid literal: {err}"),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(id: String) -> Result<Self, IdError> {
                Self::parse($field, &id)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(id: &str) -> Result<Self, IdError> {
                Self::parse($field, id)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A user of the chat platform.
    UserId,
    IdKind::Text,
    "user"
);
id_type!(
    /// A group (room, channel) of users.
    GroupId,
    IdKind::Text,
    "group"
);
id_type!(
    /// A gateway process that holds user connections.
    GatewayId,
    IdKind::Name,
    "gateway_id"
);
id_type!(
    /// A deployment region; crossing regions changes the route.
    Region,
    IdKind::Name,
    "region"
);
id_type!(
    /// One device (connection) of a user; a user may have several.
    DeviceId,
    IdKind::Text,
    "device"
);

impl Region {
    /// The region of a gateway the registry does not know (dying, or not
    /// yet registered): equal to no valid region, so it takes the durable
    /// cross-region route.
    pub(crate) fn unregistered() -> Self {
        Self(Arc::from(""))
    }
}

/// Longest user, group or device id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest gateway id or region, in bytes (a Kafka topic name or NATS
/// subject token is built from a gateway id).
pub const MAX_NAME_BYTES: usize = 64;

/// Which identifier a value is, and so which rule it is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdKind {
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
pub(crate) fn check(field: &'static str, kind: IdKind, value: &str) -> Result<(), IdError> {
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

    #[test]
    fn an_id_is_made_only_by_passing_its_rule() {
        assert_eq!(
            UserId::parse("to", "bob").map(|u| u.to_string()),
            Ok("bob".into())
        );
        assert_eq!(
            GatewayId::parse("to_gateway", "gw.1"),
            Err(IdError::BadCharacter {
                field: "to_gateway",
                found: '.',
                at: 2,
                allowed: "only ASCII letters, digits, `-` and `_` are allowed"
            })
        );
        assert_eq!(
            Region::try_from(String::new()),
            Err(IdError::Empty { field: "region" })
        );
        assert_eq!(
            "gw 1".parse::<GatewayId>().map_err(|e| e.to_string()),
            Err("`gateway_id` has ' ' at byte 2: only ASCII letters, digits, `-` and `_` are allowed".into())
        );
    }

    #[test]
    fn serde_checks_what_it_reads_and_writes_plain_text() {
        let json = r#"{"id":"gw-1","region":"eu","address":""}"#;
        let info: GatewayInfo = serde_json::from_str(json).unwrap();
        assert_eq!(info, GatewayInfo::new("gw-1", "eu"));
        assert_eq!(serde_json::to_string(&info).unwrap(), json);
        let err = serde_json::from_str::<GatewayInfo>(&json.replace("gw-1", "gw/1")).unwrap_err();
        assert!(
            err.to_string().contains("`gateway_id` has '/' at byte 2"),
            "{err}"
        );
    }

    #[test]
    #[should_panic(expected = "invalid literal: `region` is empty")]
    fn a_bad_literal_in_code_fails_at_once() {
        let _ = Region::from("");
    }
}
