//! Accounting by message id over the Gateway API, as Jepsen's checkers
//! do it: what each send was told (confirmed, stored offline, neither),
//! then what each gateway's stream received. "Lost" is confirmed and never
//! received; a second delivery of an id is a duplicate (counted: gateways
//! dedupe by id), any id nobody sent here is a stray (a failure).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use switchyard::proto;

use super::fleet::Gw;

/// A message id as the API carries it.
pub type Id = Vec<u8>;

/// What a run of sends was told.
#[derive(Debug, Default)]
pub struct Sent {
    /// Confirmed by a transport or stored offline: must arrive.
    pub confirmed: HashSet<Id>,
    /// How many of those were stored offline.
    pub offline: usize,
    /// Neither: may be lost, so not counted either way.
    pub unconfirmed: usize,
    /// Sends per transport of the first target ("" when none took it).
    pub vias: BTreeMap<String, usize>,
}

impl Sent {
    /// Records one outcome; panics on anything but a routed message (this
    /// test sends nothing a sidecar should refuse).
    pub fn record(&mut self, outcome: &proto::SendOutcome) {
        let Some(proto::send_outcome::Result::Routed(routed)) = &outcome.result else {
            panic!("expected a routed outcome, got {outcome:?}");
        };
        let via = routed
            .targets
            .first()
            .map(|t| t.via.clone())
            .unwrap_or_default();
        *self.vias.entry(via).or_default() += 1;
        let offline = routed.stored_offline != proto::OfflineReason::Unspecified as i32;
        if offline {
            self.offline += 1;
            self.confirmed.insert(outcome.id.to_vec());
        } else if !routed.targets.is_empty() && routed.targets.iter().all(|t| t.confirmed) {
            self.confirmed.insert(outcome.id.to_vec());
        } else {
            self.unconfirmed += 1;
        }
    }

    /// True when every send went over `via`.
    pub fn all_via(&self, via: &str) -> bool {
        self.vias.keys().all(|v| v == via)
    }
}

/// What one gateway's stream received.
#[derive(Debug, Default)]
pub struct Got {
    pub ids: HashSet<Id>,
    /// Deliveries of an id already received.
    pub duplicates: usize,
    /// Deliveries per `via`.
    pub vias: BTreeMap<String, usize>,
    /// Creation (by the sending sidecar) to acceptance by the receiving
    /// sidecar, per first delivery.
    pub latencies: Vec<Duration>,
    /// First deliveries that another gateway routed again (the user had
    /// left it).
    pub reresolved: usize,
}

impl Got {
    fn take(&mut self, at: &str, delivery: proto::Delivery, expected: &HashSet<Id>) {
        let envelope = delivery.envelope.expect("a delivery carries an envelope");
        let id = envelope.id.to_vec();
        assert!(expected.contains(&id), "stray delivery {id:?} at {at}");
        if !self.ids.insert(id) {
            self.duplicates += 1;
            return;
        }
        *self.vias.entry(delivery.via).or_default() += 1;
        self.latencies
            .push(Duration::from_micros(delivery.latency_micros));
        if envelope
            .headers
            .contains_key(switchyard::regions::reresolve::HOPS_HEADER)
        {
            self.reresolved += 1;
        }
    }
}

/// Reads `gw`'s stream until every one of `ids` arrived (panics naming how
/// many did not within `patience`, or on a stray), then half a second more
/// to count late duplicates.
pub async fn drain(gw: &mut Gw, ids: &HashSet<Id>, patience: Duration) -> Got {
    drain_within(gw, ids, ids, patience).await
}

/// Like [`drain`], waiting for `wanted` while accepting any of `sent`
/// (a moving user's messages may reach both gateways).
pub async fn drain_within(
    gw: &mut Gw,
    wanted: &HashSet<Id>,
    sent: &HashSet<Id>,
    patience: Duration,
) -> Got {
    let mut got = Got::default();
    let deadline = tokio::time::Instant::now() + patience;
    while !wanted.is_subset(&got.ids) {
        let Ok(next) = tokio::time::timeout_at(deadline, gw.deliveries.next()).await else {
            panic!(
                "{} of {} message(s) never arrived at {} within {patience:?}",
                wanted.difference(&got.ids).count(),
                wanted.len(),
                gw.id
            );
        };
        let delivery = next.expect("stream ok").expect("stream open");
        got.take(&gw.id, delivery, sent);
    }
    let quiet = Duration::from_millis(500);
    while let Ok(next) = tokio::time::timeout(quiet, gw.deliveries.next()).await {
        let delivery = next.expect("stream ok").expect("stream open");
        got.take(&gw.id, delivery, sent);
    }
    got
}

/// Reads `gw`'s stream until nothing arrived for `quiet`; every delivery
/// must be one of `ids`.
pub async fn drain_quiet(gw: &mut Gw, ids: &HashSet<Id>, quiet: Duration) -> Got {
    let mut got = Got::default();
    while let Ok(next) = tokio::time::timeout(quiet, gw.deliveries.next()).await {
        let delivery = next.expect("stream ok").expect("stream open");
        got.take(&gw.id, delivery, ids);
    }
    got
}
