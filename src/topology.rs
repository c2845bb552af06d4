//! Who is where: identifiers for users, groups, gateways and regions, and
//! what the router knows about a gateway.

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
