//! What group membership replication carries between regions: one
//! member's last write in a region ([`Membership`]), and the members whose
//! writes here are still to be produced ([`Marks`]). Shared by the
//! regional group store ([`super::groups`]), which writes and marks, and
//! the replication ([`super::membership`]), which produces and applies.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::feed::FromRegion;
use super::marks;
use crate::topology::{GroupId, Region, UserId};

/// One region's last write of one member: what replicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The region the write was made in.
    pub region: Region,
    /// The group.
    pub group: GroupId,
    /// The member.
    pub user: UserId,
    /// Joined (`true`) or left.
    pub member: bool,
    /// Grows with every write of this member, in any region (ties go to
    /// the greater region name).
    pub version: u64,
}

/// A member of a group: what a join or leave marks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Member {
    pub(super) group: GroupId,
    pub(super) user: UserId,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {}", self.user, self.group)
    }
}

/// The members whose writes here are still to be produced.
#[derive(Default, Clone)]
pub(super) struct Marks(pub(super) Arc<marks::Marks<Member>>);

impl Marks {
    /// Marks `user` in `group` for replication.
    pub(super) fn mark(&self, group: &GroupId, user: &UserId) {
        self.0.mark(Member {
            group: group.clone(),
            user: user.clone(),
        });
    }
}

impl FromRegion for Membership {
    fn region(&self) -> &Region {
        &self.region
    }
}
