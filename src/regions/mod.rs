//! Several regions, each with its own Redis: presence, same-region Pub/Sub
//! and offline queues stay in the region; what other regions need to know
//! of a user (where they are online) is replicated to them asynchronously
//! over Kafka, so no message waits on a cross-region lookup.
//!
//! - [`presence::RegionalPresence`]: the presence store of a region: local
//!   sessions in the region's Redis, other regions' from the replica,
//!   every local change marked for replication.
//! - `feed`: the Kafka side (snapshots of a user's sessions, versioned,
//!   produced on change; each region's consumer group applies the others).
//! - `replica`: the region's Redis side (snapshot and apply scripts);
//!   `snapshot` what both carry.
//! - [`groups::RegionalGroups`]: the region's group store: joins and
//!   leaves versioned and marked; `membership` replicates them over Kafka
//!   as `feed` does presence (`marks` is what both have to send).
//! - `resync`: every user on this node's gateways snapshotted again every
//!   `regions.resync_interval`, so a lost snapshot is repaired.
//! - `reresolve`: a message that reached a gateway on stale presence (the
//!   user moved on) is routed again from there, and a user who comes online
//!   in another region gets the offline messages stored here.
//!
//! docs/OPERATIONS.md ("Regions") has the deployment and its limits.

mod feed;
pub mod groups;
mod marks;
mod member;
mod membership;
pub mod presence;
mod replica;
pub mod reresolve;
mod resync;
mod snapshot;

use std::sync::Arc;

pub use member::Membership;
pub use reresolve::{Resend, Resent};
pub use snapshot::{RemoteSession, Snapshot};

use crate::config::RegionsConfig;
use crate::groups::Directory;
use crate::offline::OfflineStore;
use crate::presence::cache::CachedPresence;
use crate::presence::redis::RedisPresence;
use crate::redis_conn::RedisHandle;
use crate::topology::{GatewayId, Region};
use crate::transport::kafka::KafkaConfig;
use crate::transport::TransportError;

/// The running replication of one node: its publisher and its consumer.
pub struct Regions {
    region: Region,
    presence: Arc<presence::RegionalPresence>,
    groups: Arc<groups::RegionalGroups>,
    kafka: feed::Kafka,
    config: RegionsConfig,
    forwarder: Arc<reresolve::Forwarder>,
    /// This node's gateways, which the re-sync walks.
    hosted: Arc<resync::Hosted>,
    /// The consumer, the sweep and the re-sync, stopped on drop.
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Regions {
    /// Connects the presence feed and wraps the region's presence store;
    /// `region` is `config.local`, checked.
    pub(crate) async fn connect(
        config: &RegionsConfig,
        region: Region,
        kafka: &KafkaConfig,
        redis: RedisHandle,
        local: Arc<RedisPresence>,
    ) -> Result<Self, TransportError> {
        let kafka = feed::Kafka::connect(kafka, config, region.clone()).await?;
        let replica = Arc::new(replica::Replica::new(redis.clone(), config.tombstone_ttl));
        let publisher = feed::publish(
            &kafka,
            replica.clone(),
            region.clone(),
            config.topic.clone(),
        );
        let presence = Arc::new(presence::RegionalPresence::new(local, replica, publisher));
        let hosted = Arc::new(resync::Hosted::default());
        let members = member::Marks::default();
        let groups = Arc::new(groups::RegionalGroups::new(
            redis,
            region.clone(),
            members.clone(),
        ));
        let topic = feed::groups_topic(config);
        let mut tasks = vec![membership::publish(&kafka, &members, groups.clone(), topic)];
        if !config.resync_interval.is_zero() {
            let every = config.resync_interval;
            tasks.push(resync::start(hosted.clone(), presence.clone(), every));
        }
        Ok(Self {
            region,
            presence,
            groups,
            kafka,
            config: config.clone(),
            forwarder: Arc::default(),
            hosted,
            tasks: parking_lot::Mutex::new(tasks),
        })
    }

    /// This node's region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The region's presence store (local and replicated sessions).
    pub fn presence(&self) -> Arc<presence::RegionalPresence> {
        self.presence.clone()
    }

    /// The region's group store (joins and leaves replicated).
    pub fn groups(&self) -> Arc<groups::RegionalGroups> {
        self.groups.clone()
    }

    /// Starts applying other regions' memberships, and their snapshots:
    /// the replica, then the
    /// group distributions of `directory`, then the hand-over of
    /// `offline` messages to users who came online elsewhere.
    pub(crate) fn follow(
        &self,
        directory: Directory,
        offline: Arc<dyn OfflineStore>,
        offline_limit: usize,
    ) -> Result<(), TransportError> {
        let applied = reresolve::on_applied(
            self.presence.clone(),
            directory,
            offline.clone(),
            self.forwarder.clone(),
            offline_limit,
        );
        let consumer = feed::follow(&self.kafka, &self.config, self.presence.replica(), applied)?;
        let sweep = reresolve::sweep(
            offline,
            self.forwarder.clone(),
            self.config.sweep_interval,
            offline_limit,
        );
        let members = membership::follow(
            &self.kafka,
            &self.config,
            &feed::groups_topic(&self.config),
            self.groups.clone(),
            self.presence.clone(),
        )?;
        self.tasks.lock().extend([consumer, sweep, members]);
        Ok(())
    }

    /// The check in front of gateway `me`'s subscriptions; while it lives,
    /// the re-sync walks `me`'s users.
    pub(crate) fn guard(
        &self,
        me: &GatewayId,
        cache: Arc<CachedPresence>,
        offline: Arc<dyn OfflineStore>,
    ) -> Arc<reresolve::Guard> {
        let guard = reresolve::Guard::new(
            me.clone(),
            cache,
            self.presence.clone(),
            offline,
            self.forwarder.clone(),
        );
        self.hosted.add(&guard);
        guard
    }
}

impl Drop for Regions {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}
