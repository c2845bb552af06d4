//! What replicates between regions: one user's sessions in one region at
//! one version (JSON on the presence topic and in the replica).

use serde::{Deserialize, Serialize};

use crate::presence::Session;
use crate::topology::{DeviceId, GatewayId, Region, UserId};

/// One user's sessions in one region at one version: what replicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The region whose sessions these are.
    pub region: Region,
    /// The user.
    pub user: UserId,
    /// Grows with every snapshot of this user in `region`.
    pub version: u64,
    /// When the snapshot was taken, microseconds since the Unix epoch
    /// (replication lag is measured from it).
    pub at_micros: i64,
    /// Every live session of the user in `region`; empty: none left.
    pub sessions: Vec<RemoteSession>,
}

/// A session as replicated (user and region are the snapshot's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSession {
    /// The device.
    pub device: DeviceId,
    /// The gateway holding it.
    pub gateway: GatewayId,
    /// When it came online, microseconds since the Unix epoch.
    pub since_micros: i64,
}

impl RemoteSession {
    /// The session of `user` in `region`.
    pub fn session(self, user: &UserId, region: &Region) -> Session {
        Session {
            user: user.clone(),
            device: self.device,
            gateway: self.gateway,
            region: region.clone(),
            since_micros: self.since_micros,
        }
    }
}
