//! Group memberships between regions over Kafka, as presence is.
//!
//! A join or leave written in a region marks the member; a task reads the
//! member's last write (its version, see [`super::groups`]) and produces
//! it on `{regions.topic}.groups`, keyed `region/group/user`, so the
//! compacted log keeps each region's last write of each member and a
//! region that joins later still finds the newest. Each region consumes
//! the topic in its own consumer group, skips its own writes and applies
//! the others unless a newer write of the member is there (idempotent and
//! order-proof); a changed membership is counted on the member's gateways
//! in every region, as a local join is. The offset is stored only after.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::FutureProducer;

use super::feed::{consume, produce_json, Kafka};
use super::groups::RegionalGroups;
use super::marks::send_marked;
use super::member::{Marks, Member, Membership};
use super::presence::RegionalPresence;
use super::RegionsConfig;
use crate::cause::Report;
use crate::groups::GroupStore;
use crate::presence::PresenceStore;
use crate::telemetry;
use crate::transport::TransportError;

/// The longest wait between attempts at a failing apply.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Starts producing the marked members' last writes. Abort the returned
/// task to stop it.
pub(super) fn publish(
    kafka: &Kafka,
    marks: &Marks,
    groups: Arc<RegionalGroups>,
    topic: String,
) -> tokio::task::JoinHandle<()> {
    let producer = kafka.producer().clone();
    send_marked(
        marks.0.clone(),
        telemetry::MEMBERSHIPS_REPLICATED,
        move |member| {
            let (groups, producer, topic) = (groups.clone(), producer.clone(), topic.clone());
            async move { send(&groups, &producer, &topic, &member).await }
        },
    )
}

/// Produces the member's last write, when it was made here (a write
/// replicated from elsewhere since is that region's to send).
async fn send(
    groups: &RegionalGroups,
    producer: &FutureProducer,
    topic: &str,
    member: &Member,
) -> Result<(), String> {
    let last = groups
        .last_write(&member.group, &member.user)
        .await
        .map_err(|e| Report(&e).to_string())?;
    let Some(membership) = last else {
        return Ok(());
    };
    let key = format!("{}/{}/{}", membership.region, member.group, member.user);
    produce_json(producer, topic, &key, &membership).await?;
    metrics::counter!(telemetry::MEMBERSHIPS_REPLICATED, "outcome" => "sent").increment(1);
    Ok(())
}

/// Starts applying the other regions' memberships to `groups`, counting a
/// changed one on the member's gateways (from `presence`: every region's).
/// Abort the returned task to stop it.
pub(super) fn follow(
    kafka: &Kafka,
    regions: &RegionsConfig,
    topic: &str,
    groups: Arc<RegionalGroups>,
    presence: Arc<RegionalPresence>,
) -> Result<tokio::task::JoinHandle<()>, TransportError> {
    consume(
        kafka,
        regions,
        "groups",
        topic,
        move |membership: Membership| {
            let (groups, presence) = (groups.clone(), presence.clone());
            async move { apply(&groups, &presence, &membership).await }
        },
    )
}

/// Applies one membership, retrying while the region's Redis fails (a
/// skipped one would leave the group wrong until the member's next write).
async fn apply(groups: &RegionalGroups, presence: &RegionalPresence, membership: &Membership) {
    let mut backoff = Duration::from_millis(50);
    let changed = loop {
        match groups.apply(membership).await {
            Ok(changed) => break changed,
            Err(err) => {
                tracing::warn!(err = %Report(&err), "group membership not applied; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    let outcome = if changed { "applied" } else { "unchanged" };
    metrics::counter!(telemetry::MEMBERSHIPS_APPLIED, "outcome" => outcome).increment(1);
    if !changed {
        return;
    }
    let (group, user) = (&membership.group, &membership.user);
    let sessions = match presence.locate(user).await {
        Ok(sessions) => sessions,
        Err(err) => {
            tracing::warn!(err = %Report(&err), %user, %group, "member's gateways not counted");
            return;
        }
    };
    let gateways: std::collections::BTreeSet<_> = sessions.into_iter().map(|s| s.gateway).collect();
    let delta = if membership.member { 1 } else { -1 };
    for gateway in gateways {
        if let Err(err) = groups.adjust(group, &gateway, delta).await {
            tracing::warn!(err = %Report(&err), %user, %group, %gateway, "group distribution not adjusted");
        }
    }
}
