//! The in-process fleet behind `switchyard demo`: regions of gateways, users
//! (some on several devices, some offline), groups and a few blocks, a mixed
//! load, and an independent check of what arrived. Expectations come from
//! the demo's own model of who is where, not from the router's reports, so
//! a routing bug shows up as `lost` or `misrouted`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use switchyard::backends::Backends;
use switchyard::backends::BuildError;
use switchyard::config::{ConfigError, Settings};
use switchyard::envelope::{Destination, Envelope, MessageId, Priority};
use switchyard::error::StoreError;
use switchyard::inbox::Via;
use switchyard::policy::Route;
use switchyard::router::Router;
use switchyard::topology::{GatewayId, GatewayInfo, GroupId, Region, UserId};

mod traffic;

use crate::bench::new_histogram;
use traffic::{receive, send_phase, settle};

/// Region names used before falling back to `region-N`.
const REGION_NAMES: [&str; 6] = ["eu", "us", "ap", "sa", "af", "me"];

/// The size and mix of the demo fleet.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of regions.
    pub regions: usize,
    /// Gateways in each region.
    pub gateways_per_region: usize,
    /// Users in the fleet.
    pub users: usize,
    /// Share of online users with a second device on another gateway.
    pub multi_device: f64,
    /// Share of users who are offline while messages are sent.
    pub offline: f64,
    /// Number of groups.
    pub groups: usize,
    /// Members per group.
    pub group_size: usize,
    /// Share of messages sent to a group.
    pub group_share: f64,
    /// Messages to send in all.
    pub messages: usize,
    /// Messages per `send_batch` call.
    pub batch: usize,
    /// Messages per second over the whole fleet (open loop); 0 sends as fast
    /// as the routers accept, which measures throughput but makes latency
    /// mostly queueing.
    pub rate: u64,
    /// Seed for the random fleet and load, so runs are repeatable.
    pub seed: u64,
    /// How long to wait for stragglers after the last send.
    pub settle: Duration,
    /// Canary shares to step through, one sending phase each, when the
    /// config has a `[canary]`.
    pub canary_steps: Vec<u8>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            regions: 3,
            gateways_per_region: 3,
            users: 3000,
            multi_device: 0.2,
            offline: 0.1,
            groups: 20,
            group_size: 50,
            group_share: 0.2,
            messages: 50_000,
            batch: 64,
            rate: 20_000,
            seed: 7,
            settle: Duration::from_secs(10),
            canary_steps: vec![0, 10, 30, 50, 100, 0],
        }
    }
}

/// One row of the result table: traffic of one route over one path.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Publishes the routers reported (one per message and target gateway).
    pub sent: u64,
    /// Deliveries the receiving gateways saw.
    pub delivered: u64,
    /// Median delivery latency, microseconds.
    pub p50_micros: u64,
    /// 99th percentile delivery latency, microseconds.
    pub p99_micros: u64,
}

/// What the demo measured.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Per (route, via): sent, delivered, latency.
    pub rows: BTreeMap<(String, String), Row>,
    /// Messages sent.
    pub messages: u64,
    /// Messages the routers wrote to the offline store, by reason.
    pub stored_offline: BTreeMap<String, u64>,
    /// Messages a recipient had blocked.
    pub blocked: u64,
    /// Offline messages replayed when their users connected at the end.
    pub replayed: u64,
    /// Expected deliveries that never arrived and are not in the offline store.
    pub lost: u64,
    /// Deliveries beyond the first of a message at a gateway.
    pub duplicates: u64,
    /// Deliveries at a gateway that should not have received the message.
    pub misrouted: u64,
    /// Deliveries that arrived before an earlier message of the same pair.
    pub out_of_order: u64,
    /// Time spent sending.
    pub send_elapsed: Duration,
    /// Per canary step: the share and the publishes per transport.
    pub canary_steps: Vec<CanaryStep>,
}

/// One step of a canary during the demo.
#[derive(Debug, Clone, Default)]
pub struct CanaryStep {
    /// The share in force.
    pub share: u8,
    /// Confirmed publishes per transport (dual mode counts both copies).
    pub publishes: BTreeMap<String, u64>,
    /// The reason of an automatic rollback seen by the end of the step.
    pub rolled_back: Option<String>,
}

impl DemoReport {
    /// Whether every message arrived exactly once, where it should, in order.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.misrouted == 0 && self.out_of_order == 0
    }

    /// Messages sent per second.
    pub fn send_rate(&self) -> f64 {
        self.messages as f64 / self.send_elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The fleet could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A store failed while setting up or checking.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The options make no fleet.
    #[error("demo options: {0}")]
    Options(String),
}

struct User {
    id: UserId,
    /// Gateway indexes of live sessions; empty while offline.
    sessions: Vec<usize>,
}

/// What one receiving gateway saw.
#[derive(Default)]
struct Seen {
    counts: HashMap<MessageId, u32>,
    latency: HashMap<(Route, Via), Histogram<u64>>,
    last_of_pair: HashMap<(UserId, Destination), MessageId>,
    out_of_order: u64,
}

/// Runs the demo on `settings`. `on_sent` is called with each chunk size as
/// messages go out (for a progress bar).
pub async fn run(
    settings: Settings,
    options: DemoOptions,
    on_sent: impl Fn(u64) + Send + Sync + 'static,
) -> Result<DemoReport, DemoError> {
    if options.regions == 0 || options.gateways_per_region == 0 || options.users < 2 {
        return Err(DemoError::Options(
            "need at least 1 region, 1 gateway per region and 2 users".into(),
        ));
    }
    let mut rng = StdRng::seed_from_u64(options.seed);
    let backends = Backends::from_settings(&settings).await?;
    let live = settings.live_policy()?;
    live.watch();
    // Unique per run, so runs against shared backends (Redis) don't mix.
    let run_id = MessageId::new().to_string().to_lowercase();

    let mut gateways = Vec::new();
    for r in 0..options.regions {
        let region: Region = REGION_NAMES
            .get(r)
            .map_or_else(|| crate::made_id(format!("region-{r}")), |&n| n.into());
        for g in 0..options.gateways_per_region {
            gateways.push(GatewayInfo::new(
                crate::made_id::<GatewayId>(format!("{run_id}-{region}-gw{g}")),
                region.clone(),
            ));
        }
    }
    let region_of: Arc<HashMap<GatewayId, Region>> = Arc::new(
        gateways
            .iter()
            .map(|g| (g.id.clone(), g.region.clone()))
            .collect(),
    );
    let mut routers = Vec::new();
    let mut seen = Vec::new();
    let received = Arc::new(AtomicU64::new(0));
    let mut receivers = Vec::new();
    for gateway in &gateways {
        let (router, inbox) = Router::builder(gateway.clone())
            .settings(settings.clone())
            .backends(backends.clone())
            .policy(live.clone())
            .build()
            .await?;
        let state = Arc::new(Mutex::new(Seen::default()));
        receivers.push(tokio::spawn(receive(
            inbox,
            gateway.clone(),
            region_of.clone(),
            state.clone(),
            received.clone(),
        )));
        routers.push(router);
        seen.push(state);
    }

    // The gateways stay alive (registry and session TTLs) however long the run.
    let _alive: Vec<_> = routers
        .iter()
        .map(|router| router.keep_alive(settings.heartbeat_interval()))
        .collect();

    // Users: online ones get a home gateway, some a second device elsewhere.
    let n_gw = gateways.len();
    let mut users: Vec<User> = (0..options.users)
        .map(|i| User {
            id: crate::made_id(format!("{run_id}-u{i}")),
            sessions: Vec::new(),
        })
        .collect();
    for user in users.iter_mut() {
        if rng.random_bool(options.offline.clamp(0.0, 1.0)) {
            continue;
        }
        let home = rng.random_range(0..n_gw);
        routers[home].connect(user.id.clone(), "d0").await?;
        user.sessions.push(home);
        if n_gw > 1 && rng.random_bool(options.multi_device.clamp(0.0, 1.0)) {
            let second = (home + rng.random_range(1..n_gw)) % n_gw;
            routers[second].connect(user.id.clone(), "d1").await?;
            user.sessions.push(second);
        }
    }
    let groups: Vec<(GroupId, Vec<usize>)> = (0..options.groups)
        .map(|g| {
            let members: HashSet<usize> = (0..options.group_size.min(users.len()))
                .map(|_| rng.random_range(0..users.len()))
                .collect();
            (
                crate::made_id::<GroupId>(format!("{run_id}-g{g}")),
                members.into_iter().collect(),
            )
        })
        .collect();
    for (group, members) in &groups {
        for &m in members {
            routers[0].join(group.clone(), users[m].id.clone()).await?;
        }
    }
    // A few blocks: (recipient, blocked sender).
    let blocks: HashSet<(usize, usize)> = (0..users.len() / 100)
        .map(|_| {
            (
                rng.random_range(0..users.len()),
                rng.random_range(0..users.len()),
            )
        })
        .collect();
    for &(recipient, sender) in &blocks {
        routers[0]
            .block(users[recipient].id.clone(), users[sender].id.clone())
            .await?;
    }

    // Expected deliveries per gateway, and messages expected offline per user.
    let mut expected: Vec<HashSet<MessageId>> = vec![HashSet::new(); n_gw];
    let mut expected_offline: HashMap<usize, Vec<MessageId>> = HashMap::new();
    let mut report = DemoReport::default();

    // Plan the load: each message from an online user's home gateway.
    let online: Vec<usize> = (0..users.len())
        .filter(|&u| !users[u].sessions.is_empty())
        .collect();
    if online.is_empty() {
        return Err(DemoError::Options(
            "no user is online; lower --offline".into(),
        ));
    }
    let mut per_gateway: Vec<Vec<Envelope>> = vec![Vec::new(); n_gw];
    for _ in 0..options.messages {
        let s = online[rng.random_range(0..online.len())];
        let home = users[s].sessions[0];
        let priority = match rng.random_range(0..10) {
            0 => Priority::High,
            1 => Priority::Low,
            _ => Priority::Normal,
        };
        let to_group = !groups.is_empty() && rng.random_bool(options.group_share.clamp(0.0, 1.0));
        let destination = if to_group {
            let (group, members) = &groups[rng.random_range(0..groups.len())];
            let envelope_gateways: HashSet<usize> = members
                .iter()
                .flat_map(|&m| users[m].sessions.iter().copied())
                .collect();
            (Destination::Group(group.clone()), envelope_gateways, None)
        } else {
            let r = rng.random_range(0..users.len());
            let targets = if blocks.contains(&(r, s)) {
                HashSet::new()
            } else {
                users[r].sessions.iter().copied().collect()
            };
            let offline_user =
                (users[r].sessions.is_empty() && !blocks.contains(&(r, s))).then_some(r);
            (
                Destination::User(users[r].id.clone()),
                targets,
                offline_user,
            )
        };
        let (destination, targets, offline_user) = destination;
        let envelope = Envelope::new(
            users[s].id.clone(),
            gateways[home].id.clone(),
            destination,
            vec![b'x'; 64],
        )
        .with_priority(priority);
        for g in targets {
            expected[g].insert(envelope.id);
        }
        if let Some(u) = offline_user {
            expected_offline.entry(u).or_default().push(envelope.id);
        }
        per_gateway[home].push(envelope);
    }

    // Send, in phases when a canary steps through its shares.
    let steps: Vec<Option<u8>> = match (&live.load().canary, options.canary_steps.is_empty()) {
        (Some(_), false) => options.canary_steps.iter().map(|s| Some(*s)).collect(),
        _ => vec![None],
    };
    let on_sent: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(on_sent);
    let started = Instant::now();
    let mut remaining = per_gateway;
    for (k, share) in steps.iter().enumerate() {
        // Each phase takes an equal slice of every gateway's messages.
        let phase: Vec<Vec<Envelope>> = remaining
            .iter_mut()
            .map(|list| {
                let take = list.len() / (steps.len() - k);
                list.drain(..take).collect()
            })
            .collect();
        if let Some(share) = share {
            live.set_share(*share);
        }
        let tally = send_phase(&routers, phase, &options, on_sent.clone()).await?;
        if let Some(share) = share {
            report.canary_steps.push(CanaryStep {
                share: *share,
                publishes: tally.publishes.clone(),
                rolled_back: live.last_rollback().map(|r| r.reason),
            });
        }
        for (key, n) in tally.sent {
            report.rows.entry(key).or_default().sent += n;
        }
        for (reason, n) in tally.offline {
            *report.stored_offline.entry(reason).or_default() += n;
        }
        report.blocked += tally.blocked;
    }
    report.send_elapsed = started.elapsed();
    report.messages = options.messages as u64;

    let live_total: u64 = expected.iter().map(|e| e.len() as u64).sum();
    settle(&received, live_total, options.settle).await;

    // Offline users connect (on gateway 0): their stored messages replay.
    let offline_total: u64 = expected_offline.values().map(|v| v.len() as u64).sum();
    for (&u, ids) in &expected_offline {
        report.replayed += routers[0].connect(users[u].id.clone(), "late").await? as u64;
        expected[0].extend(ids.iter().copied());
    }
    settle(&received, live_total + offline_total, options.settle).await;
    for receiver in &receivers {
        receiver.abort();
    }

    // Compare what arrived with the model.
    let mut latencies: BTreeMap<(String, String), Histogram<u64>> = BTreeMap::new();
    let offline_store = &backends.offline();
    for (g, state) in seen.iter().enumerate() {
        let state = state.lock();
        for (id, &count) in &state.counts {
            if expected[g].contains(id) {
                report.duplicates += u64::from(count - 1);
            } else {
                report.misrouted += u64::from(count);
            }
        }
        report.out_of_order += state.out_of_order;
        for ((route, via), histogram) in &state.latency {
            // Replays are one row: the route they would have taken is moot.
            let route = if *via == Via::Offline {
                "(stored)"
            } else {
                route.as_str()
            };
            let merged = latencies
                .entry((route.to_string(), via.as_str().to_string()))
                .or_insert_with(new_histogram);
            // Same bounds on both sides, so adding cannot fail.
            let _ = merged.add(histogram);
        }
        for id in &expected[g] {
            if !state.counts.contains_key(id) {
                report.lost += 1;
            }
        }
    }
    let stored: u64 = report.stored_offline.values().sum();
    if stored > 0 {
        report
            .rows
            .entry(("(stored)".into(), "offline".into()))
            .or_default()
            .sent = stored;
    }
    for (key, histogram) in latencies {
        let row = report.rows.entry(key).or_default();
        row.delivered = histogram.len();
        row.p50_micros = histogram.value_at_quantile(0.5);
        row.p99_micros = histogram.value_at_quantile(0.99);
    }
    // A message the router stored offline for an online user (every
    // transport failed) is not lost: it waits in that user's store.
    if report.lost > 0 {
        let mut parked = 0;
        for user in users.iter().filter(|u| !u.sessions.is_empty()) {
            parked += offline_store.depth(&user.id).await? as u64;
        }
        report.lost = report.lost.saturating_sub(parked);
    }
    Ok(report)
}
