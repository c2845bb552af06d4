//! The fleet one measured path drives: one sending gateway and `fanout`
//! receiving gateways, each hosting one user (all in one group when
//! `fanout > 1`), and the message sent. Every path builds it the same way;
//! only who hosts the gateways (routers here, or sidecars) differs.

use bytes::Bytes;

use crate::envelope::{Destination, Envelope, MessageId};
use crate::topology::{GatewayId, GroupId, UserId};

/// Ids and message of one path's run.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Unique per run, so runs against shared backends don't mix.
    run: String,
    fanout: usize,
    /// Region of the receiving gateways: the sender is in `eu`, so this
    /// picks the route.
    pub(crate) to_region: &'static str,
    payload: Bytes,
    /// Built once: ids are shared, so each message only clones pointers.
    sender: GatewayId,
    sender_user: UserId,
    destination: Destination,
}

impl Layout {
    /// A fresh layout for `route` (`same_region` or `cross_region`).
    pub(crate) fn new(route: &str, fanout: usize, size: usize) -> Self {
        let run = MessageId::new().to_string().to_lowercase();
        let fanout = fanout.max(1);
        let destination = if fanout > 1 {
            Destination::Group(GroupId::new(format!("bench-{run}-g")))
        } else {
            Destination::User(format!("bench-{run}-u0").into())
        };
        Self {
            sender: format!("bench-{run}-a").into(),
            sender_user: format!("bench-{run}-s").into(),
            destination,
            run,
            fanout,
            to_region: if route == "cross_region" { "us" } else { "eu" },
            payload: Bytes::from(super::chat_text(size, 1)),
        }
    }

    /// The sending gateway, in `eu`.
    pub(crate) fn sender(&self) -> &GatewayId {
        &self.sender
    }

    /// The sending user, hosted by [`Self::sender`].
    pub(crate) fn sender_user(&self) -> &UserId {
        &self.sender_user
    }

    /// Each receiving gateway and the user it hosts.
    pub(crate) fn receivers(&self) -> impl Iterator<Item = (String, String)> + '_ {
        (0..self.fanout).map(|i| {
            (
                format!("bench-{}-b{i}", self.run),
                format!("bench-{}-u{i}", self.run),
            )
        })
    }

    /// The group of all receiving users, when there is more than one.
    pub(crate) fn group(&self) -> Option<&GroupId> {
        match &self.destination {
            Destination::Group(group) => Some(group),
            Destination::User(_) => None,
        }
    }

    /// The message, created at `stamp` (the schedule's intended send time).
    pub(crate) fn message(&self, stamp: i64) -> Envelope {
        let mut e = Envelope::new(
            self.sender_user.clone(),
            self.sender.clone(),
            self.destination.clone(),
            self.payload.clone(),
        );
        e.created_at_micros = stamp;
        e
    }
}
