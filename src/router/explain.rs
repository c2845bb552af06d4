//! `switchyard explain`: where a message would go and why, from the plan
//! alone (nothing is sent, no transport is attached).

use std::fmt;

use crate::backends::Backends;
use crate::envelope::{Destination, Envelope};
use crate::error::SendError;
use crate::policy::live::LivePolicy;
use crate::policy::quality::RouteQuality;
use crate::policy::Decision;
use crate::presence::Session;
use crate::topology::{GatewayId, GatewayInfo, Region};
use crate::transport::Health;

use super::plan::{plan, Found};

/// Where a message would go and why: `switchyard explain`.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The sending gateway.
    pub from: GatewayInfo,
    /// The recipient.
    pub destination: Destination,
    /// Whether the recipient blocked the sender.
    pub blocked: bool,
    /// Sessions found for a user recipient.
    pub sessions: Vec<Session>,
    /// Gateways hosting online members of a group recipient, with counts.
    pub distribution: Vec<(GatewayId, u64)>,
    /// The decision per target gateway, with each transport's health.
    pub targets: Vec<(GatewayId, Region, Decision, Vec<Health>)>,
    /// The quality rules' verdicts per route and target region.
    pub quality: Vec<RouteQuality>,
}

/// What sending `envelope` from gateway `from` would do, without sending it
/// or attaching to any transport (`switchyard explain`).
pub async fn explain(
    from: &GatewayInfo,
    backends: &Backends,
    live: &LivePolicy,
    max_payload: usize,
    envelope: Envelope,
) -> Result<Explanation, SendError> {
    let policy = live.load();
    let plan = plan(
        from,
        backends,
        &policy,
        live.quality(),
        max_payload,
        envelope,
    )
    .await?;
    let transports = &backends.transports;
    let (sessions, distribution) = match plan.found {
        Found::Sessions(s) => (s.to_vec(), Vec::new()),
        Found::Distribution(d) => (Vec::new(), d),
    };
    Ok(Explanation {
        from: from.clone(),
        destination: plan.envelope.destination,
        blocked: plan.blocked,
        sessions,
        distribution,
        targets: plan
            .targets
            .into_iter()
            .map(|(gateway, region, decision)| {
                let health = decision
                    .transports
                    .iter()
                    .map(|k| {
                        transports
                            .get(*k)
                            .map_or_else(|e| Health::Down(e.to_string()), |t| t.health())
                    })
                    .collect();
                (gateway, region, decision, health)
            })
            .collect(),
        quality: live.route_quality(),
    })
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "from gateway {} (region {})",
            self.from.id, self.from.region
        )?;
        writeln!(f, "to {}", self.destination)?;
        if self.blocked {
            return writeln!(
                f,
                "blocked: the recipient has blocked the sender; nothing is sent"
            );
        }
        match &self.destination {
            Destination::User(_) if self.sessions.is_empty() => {
                return writeln!(
                    f,
                    "presence: no live session -> stored offline, replayed on connect"
                );
            }
            Destination::User(_) => {
                writeln!(f, "presence: {} session(s)", self.sessions.len())?;
                for s in &self.sessions {
                    writeln!(
                        f,
                        "  device {} on gateway {} (region {})",
                        s.device, s.gateway, s.region
                    )?;
                }
            }
            Destination::Group(_) if self.distribution.is_empty() => {
                return writeln!(f, "group: no online member -> nothing to publish");
            }
            Destination::Group(_) => {
                writeln!(
                    f,
                    "group: online members on {} gateway(s), one publish each",
                    self.distribution.len()
                )?;
                for (gateway, count) in &self.distribution {
                    writeln!(f, "  gateway {gateway}: {count} member(s)")?;
                }
            }
        }
        for (gateway, region, decision, health) in &self.targets {
            let order: Vec<String> = decision
                .transports
                .iter()
                .zip(health)
                .map(|(k, h)| match h {
                    Health::Up => k.to_string(),
                    Health::Down(why) => format!("{k} (down: {why})"),
                })
                .collect();
            writeln!(
                f,
                "-> gateway {gateway} (region {region}): route {}, transports [{}]: {}",
                decision.route,
                order.join(", "),
                decision.reason
            )?;
        }
        for quality in &self.quality {
            writeln!(f, "quality: {quality}")?;
        }
        writeln!(f, "if every transport fails: stored offline")
    }
}
