//! What the router says happened to each message: the caller's answer to
//! "was it delivered, where, how".

use crate::envelope::MessageId;
use crate::error::PublishError;
use crate::inbox::Via;
use crate::offline::OfflineReason;
use crate::policy::Route;
use crate::topology::GatewayId;
use crate::transport::TransportKind;

/// What happened to one message.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// The message.
    pub id: MessageId,
    /// Its fate.
    pub outcome: Outcome,
}

/// The fate of one message.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The recipient has blocked the sender; nothing was sent.
    Blocked,
    /// Published to each target gateway (one per gateway, however many
    /// devices or members it hosts). `stored_offline` says whether (and why)
    /// the message also went to the offline store: the recipient had no
    /// session, or every transport to one of its gateways failed. A group
    /// message with no online member has no targets and is not stored.
    Routed {
        /// One entry per target gateway.
        targets: Vec<TargetReport>,
        /// Set when the message was written to the offline store.
        stored_offline: Option<OfflineReason>,
    },
}

/// The fate of one message at one target gateway.
#[derive(Debug, Clone)]
pub struct TargetReport {
    /// The target gateway.
    pub gateway: GatewayId,
    /// The route taken.
    pub route: Route,
    /// `Ok` with what took the message: this gateway's inbox, or a transport
    /// that either confirmed it or (fire-and-forget, `confirmed == false`)
    /// accepted it into its client's send queue. `Err` with every
    /// transport's error, in the order tried, when none took it.
    pub result: Result<Via, PublishError>,
    /// Something that will deliver the message accepted it: the local inbox,
    /// the broker's ack, the receiving queue, a subscriber count above 0.
    /// False when `result` is an error, and for fire-and-forget publishes the
    /// client library only enqueued (low priority on Kafka, NATS, gRPC),
    /// which may still be lost.
    pub confirmed: bool,
    /// The canary transport it was also published on (dual mode), when that
    /// publish was confirmed within `canary.mirror_wait` of the primary's.
    pub mirrored: Option<TransportKind>,
}
