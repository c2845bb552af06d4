//! A fleet of regions for tests/it/regions.rs and tests/it/wan.rs: each region
//! its own private `redis-server` (store and same-region Pub/Sub), Kafka
//! between them (direct or through the simulated WAN), presence
//! replicated on a topic of this run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use switchyard::config::RegionsConfig;
use switchyard::presence::redis::RedisPresence;
use switchyard::presence::{PresenceStore, Session};
use switchyard::redis_conn::{RedisConfig, RedisHandle};
use switchyard::regions::{Membership, Snapshot};
use switchyard::transport::redis::RedisTransportConfig;
use switchyard::transport::TransportKind;
use switchyard::{
    Backends, Destination, Envelope, GatewayId, GatewayInfo, GroupId, Inbox, MessageId, Outcome,
    Priority, Router, SendReport, Settings, UserId, Via,
};

use crate::servers;

/// One region of a fleet: its name and how it reaches Kafka.
#[derive(Debug, Clone)]
pub struct RegionSpec {
    /// The region's name.
    pub name: &'static str,
    /// The bootstrap list this region's nodes use.
    pub kafka: String,
}

impl RegionSpec {
    /// A region on the shared Kafka cluster, no WAN in between.
    pub fn direct(name: &'static str) -> Self {
        Self {
            name,
            kafka: servers::KAFKA.into(),
        }
    }
}

/// One region's running parts.
pub struct Region {
    pub settings: Settings,
    pub backends: Backends,
    pub redis: servers::PrivateBroker,
}

/// The regions of one test, with ids unique to its run.
pub struct Fleet {
    pub run: String,
    pub regions: HashMap<&'static str, Region>,
}

/// A region's settings: its Redis for presence, offline and same-region
/// Pub/Sub; Kafka cross-region and for presence.
pub fn settings(spec: &RegionSpec, redis_url: &str, run: &str) -> Settings {
    let mut settings = Settings::default();
    let redis = RedisConfig {
        url: redis_url.into(),
        ..RedisConfig::default()
    };
    let mut kafka = servers::kafka_config(&spec.kafka);
    kafka.group_prefix = format!("regions-{run}.");
    kafka.topics.partitions = 1;
    settings.transports.memory = None;
    settings.transports.kafka = Some(kafka);
    settings.transports.redis = Some(RedisTransportConfig {
        connection: redis.clone(),
        ..RedisTransportConfig::default()
    });
    settings.store = switchyard::config::StoreConfig::Redis(redis);
    settings.routing.same_region = "redis".into();
    settings.routing.cross_region = "kafka".into();
    settings.regions = Some(RegionsConfig {
        local: spec.name.into(),
        topic: format!("sy.presence.{run}"),
        partitions: 3,
        redis: BTreeMap::new(),
        ..RegionsConfig::default()
    });
    settings
}

impl Fleet {
    /// Starts each region's Redis and backends.
    pub async fn start(specs: &[RegionSpec]) -> Self {
        Self::start_with(specs, |_| {}).await
    }

    /// Like [`Fleet::start`], with `tweak` applied to every region's settings.
    pub async fn start_with(specs: &[RegionSpec], tweak: impl Fn(&mut Settings)) -> Self {
        let run = ulid::Ulid::new().to_string().to_lowercase();
        let mut regions = HashMap::new();
        for spec in specs {
            let redis = servers::PrivateBroker::redis().await;
            let mut settings = settings(spec, &redis.address(), &run);
            tweak(&mut settings);
            let backends = Backends::from_settings(&settings)
                .await
                .unwrap_or_else(|e| panic!("region {}: {e}", spec.name));
            regions.insert(
                spec.name,
                Region {
                    settings,
                    backends,
                    redis,
                },
            );
        }
        Self { run, regions }
    }

    fn region(&self, name: &str) -> &Region {
        self.regions
            .get(name)
            .unwrap_or_else(|| panic!("no region {name}"))
    }

    /// A name unique to this run.
    pub fn user(&self, name: &str) -> UserId {
        UserId::try_from(format!("{name}-{}", self.run)).expect("user id")
    }

    /// A group name unique to this run.
    pub fn group(&self, name: &str) -> GroupId {
        GroupId::try_from(format!("{name}-{}", self.run)).expect("group id")
    }

    /// A gateway `name` in `region`.
    pub async fn gateway(&self, region: &str, name: &str) -> Gateway {
        self.try_gateway(region, name)
            .await
            .unwrap_or_else(|e| panic!("gateway {name}: {e}"))
    }

    /// A gateway `name` (of the region its name starts with) on
    /// `region`'s node.
    pub async fn try_gateway(
        &self,
        region: &str,
        name: &str,
    ) -> Result<Gateway, switchyard::backends::BuildError> {
        let r = self.region(region);
        let info = GatewayInfo::new(
            GatewayId::try_from(format!("{name}-{}", self.run)).expect("gateway id"),
            name[..2].parse::<switchyard::Region>().expect("region"),
        );
        let (router, inbox) = Router::builder(info)
            .settings(r.settings.clone())
            .backends(r.backends.clone())
            .build()
            .await?;
        // Heartbeats, as a gateway runs: sessions and the registration
        // outlive their TTLs over a long test.
        let alive = router.keep_alive(r.settings.heartbeat_interval());
        Ok(Gateway {
            router,
            inbox,
            _alive: alive,
        })
    }

    /// Waits until `region` sees `user` online on `gateway` (read from the
    /// store, not a cache); returns how long that took.
    pub async fn wait_located(
        &self,
        region: &str,
        user: &UserId,
        gateway: &GatewayId,
        within: Duration,
    ) -> Duration {
        let start = Instant::now();
        let presence = &self.region(region).backends.presence();
        loop {
            let found = presence
                .locate_many_uncached(std::slice::from_ref(user))
                .await
                .expect("locate");
            if found[0].iter().any(|s| &s.gateway == gateway) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{region} never saw {user} on {gateway}: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits until `region`'s distribution of `group` counts `gateway`
    /// (applied just after the snapshot that put a member there).
    pub async fn wait_distribution(&self, region: &str, group: &GroupId, gateway: &GatewayId) {
        let groups = self.region(region).backends.directory().groups().clone();
        let start = Instant::now();
        loop {
            let found = groups.distribution(group).await.expect("distribution");
            if found.iter().any(|(g, _)| g == gateway) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{region}'s distribution of {group} never counted {gateway}: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Writes `session` to `region`'s store as a node does before it marks
    /// the user for replication, and nothing else: what is left when that
    /// node crashes before producing the snapshot.
    pub async fn write_unreplicated(&self, region: &str, session: Session) {
        let r = self.region(region);
        let config = RedisConfig {
            url: r.redis.address(),
            ..RedisConfig::default()
        };
        let redis = RedisHandle::connect(&config).await.expect("connect");
        let store = RedisPresence::new(redis, r.settings.presence.session_ttl)
            .await
            .expect("presence store");
        store.online(session).await.expect("online");
    }

    /// Each region's entry for `user` in `region`'s replica: region ->
    /// (version, sessions json).
    pub async fn replicated(&self, region: &str, user: &UserId) -> BTreeMap<String, (u64, String)> {
        let key = format!("sy:presence-remote:{{{user}}}");
        self.redis_hash(region, &key)
            .await
            .into_iter()
            .map(|(region, value)| {
                let (version, json) = value.split_once('|').expect("version|sessions");
                (region, (version.parse().expect("version"), json.to_owned()))
            })
            .collect()
    }

    /// Produces `snapshot` on the presence topic as a node would (keyed
    /// `region/user`), e.g. one that was held up and arrives late.
    pub async fn produce_snapshot(&self, snapshot: &Snapshot) {
        let key = format!("{}/{}", snapshot.region, snapshot.user);
        self.produce("", &key, serde_json::to_vec(snapshot).expect("json"))
            .await;
    }

    /// Produces `membership` on the membership topic as a node would
    /// (keyed `region/group/user`).
    pub async fn produce_membership(&self, membership: &Membership) {
        let m = membership;
        let key = format!("{}/{}/{}", m.region, m.group, m.user);
        self.produce(".groups", &key, serde_json::to_vec(m).expect("json"))
            .await;
    }

    async fn produce(&self, suffix: &str, key: &str, payload: Vec<u8>) {
        let any = self.regions.values().next().expect("a region");
        let topic = format!(
            "{}{suffix}",
            any.settings.regions.as_ref().expect("[regions]").topic
        );
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", servers::KAFKA)
            .create()
            .expect("producer");
        producer
            .send(
                FutureRecord::to(&topic).key(key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");
    }

    /// The hash at `key` in `region`'s Redis.
    pub async fn redis_hash(&self, region: &str, key: &str) -> BTreeMap<String, String> {
        let client = redis::Client::open(self.region(region).redis.address()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("HGETALL")
    }

    /// Waits until `region`'s members of `group` are `members`.
    pub async fn wait_members(&self, region: &str, group: &GroupId, members: &[&UserId]) {
        let groups = self.region(region).backends.directory().groups().clone();
        let mut expected: Vec<UserId> = members.iter().map(|&u| u.clone()).collect();
        expected.sort();
        let start = Instant::now();
        loop {
            let mut found = groups.members(group).await.unwrap_or_default();
            found.sort();
            if found == expected {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{region}'s members of {group} are {found:?}, not {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Keys of `region`'s Redis that name `needle`.
    pub async fn redis_keys(&self, region: &str, needle: &GatewayId) -> Vec<String> {
        let client = redis::Client::open(self.region(region).redis.address()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        redis::cmd("KEYS")
            .arg(format!("*{needle}*"))
            .query_async(&mut conn)
            .await
            .expect("KEYS")
    }
}

/// A gateway: its router and inbox.
pub struct Gateway {
    pub router: Router,
    pub inbox: Inbox,
    _alive: switchyard::KeepAlive,
}

impl Gateway {
    pub fn id(&self) -> &GatewayId {
        &self.router.gateway().id
    }
}

/// What a run of sends was told.
#[derive(Debug, Default)]
pub struct Sent {
    /// Delivered (confirmed by a transport or the local inbox) or stored
    /// offline: must arrive.
    pub confirmed: HashSet<MessageId>,
    /// How many of those were stored offline.
    pub offline: usize,
    /// Neither: may be lost.
    pub unconfirmed: usize,
    /// The first target's transport, per message.
    pub vias: Vec<Option<Via>>,
    /// Send latency (the caller's wait), per message.
    pub waits: Vec<Duration>,
}

impl Sent {
    pub fn from_reports(reports: impl IntoIterator<Item = SendReport>) -> Self {
        let mut sent = Sent::default();
        for report in reports {
            sent.record(report);
        }
        sent
    }

    pub fn record(&mut self, report: SendReport) {
        let Outcome::Routed {
            targets,
            stored_offline,
        } = report.outcome
        else {
            panic!("blocked")
        };
        self.vias
            .push(targets.first().and_then(|t| t.result.clone().ok()));
        if stored_offline.is_some() {
            self.offline += 1;
            self.confirmed.insert(report.id);
        } else if !targets.is_empty() && targets.iter().all(|t| t.confirmed) {
            self.confirmed.insert(report.id);
        } else {
            self.unconfirmed += 1;
        }
    }

    pub fn all_via(&self, kind: TransportKind) -> bool {
        self.vias.iter().all(|v| *v == Some(Via::Transport(kind)))
    }
}

/// Sends `n` messages from `from` to `user`, each awaited.
pub async fn send(from: &Gateway, user: &UserId, n: usize, priority: Priority) -> Sent {
    let mut sent = Sent::default();
    for i in 0..n {
        let envelope = Envelope::new(
            "sender",
            from.id().clone(),
            Destination::User(user.clone()),
            format!("msg {i}"),
        )
        .with_priority(priority);
        let start = Instant::now();
        let report = from.router.send(envelope).await.expect("send");
        sent.waits.push(start.elapsed());
        sent.record(report);
    }
    sent
}

/// What a gateway received.
#[derive(Debug, Default)]
pub struct Got {
    pub ids: HashSet<MessageId>,
    pub vias: HashSet<Via>,
    pub headers: Vec<BTreeMap<String, String>>,
    /// Creation to acceptance by the inbox, per delivery.
    pub latencies: Vec<Duration>,
}

impl Got {
    fn take(&mut self, gateway: &GatewayId, delivery: switchyard::Delivery) {
        assert!(
            self.ids.insert(delivery.envelope.id),
            "duplicate delivery of {} at {gateway}",
            delivery.envelope.id
        );
        self.vias.insert(delivery.via);
        self.latencies.push(delivery.latency);
        self.headers.push(delivery.envelope.headers);
    }
}

/// Reads `to`'s inbox until every one of `ids` arrived (panics naming how
/// many did not within `patience`, and on any duplicate or stray), then
/// half a second more for late duplicates.
pub async fn drain(to: &mut Gateway, ids: &HashSet<MessageId>, patience: Duration) -> Got {
    let gateway = to.id().clone();
    let mut got = Got::default();
    let deadline = tokio::time::Instant::now() + patience;
    while !ids.is_subset(&got.ids) {
        let Ok(Some(delivery)) = tokio::time::timeout_at(deadline, to.inbox.recv()).await else {
            panic!(
                "{} of {} message(s) never arrived at {gateway}",
                ids.difference(&got.ids).count(),
                ids.len()
            );
        };
        to.inbox.ack(delivery.seq);
        assert!(
            ids.contains(&delivery.envelope.id),
            "stray delivery {} at {gateway}",
            delivery.envelope.id
        );
        got.take(&gateway, delivery);
    }
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), to.inbox.recv()).await {
        panic!("duplicate or stray delivery {} at {gateway}", d.envelope.id);
    }
    got
}

/// Reads `to`'s inbox until nothing arrived for `quiet`.
pub async fn drain_quiet(to: &mut Gateway, quiet: Duration) -> Got {
    let gateway = to.id().clone();
    let mut got = Got::default();
    while let Ok(Some(delivery)) = tokio::time::timeout(quiet, to.inbox.recv()).await {
        to.inbox.ack(delivery.seq);
        got.take(&gateway, delivery);
    }
    got
}

/// What [`move_user`] counted.
pub struct Moved {
    pub sent: usize,
    pub at_old: usize,
    pub at_new: usize,
    /// Of those at the new gateway: routed again by the old one.
    pub reresolved: usize,
    pub vias: HashSet<Via>,
}

/// `user`, online at `old`, moves to `new` (another region) while `from`
/// sends `n` messages to them, 2 ms apart. Every confirmed message must
/// arrive exactly once at one of the two gateways: at the old one before
/// the move, or at the new one (routed on fresh presence, re-resolved by
/// the old gateway, or replayed from an offline queue). Panics otherwise.
pub async fn move_user(
    from: &Gateway,
    old: &mut Gateway,
    new: &mut Gateway,
    user: &UserId,
    n: usize,
) -> Moved {
    let sender = {
        let (router, user) = (from.router.clone(), user.clone());
        tokio::spawn(async move {
            let mut sent = Sent::default();
            for i in 0..n {
                let envelope = Envelope::new(
                    "mover-friend",
                    router.gateway().id.clone(),
                    Destination::User(user.clone()),
                    format!("msg {i}"),
                )
                .with_priority(Priority::High);
                sent.record(router.send(envelope).await.expect("send"));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    old.router.disconnect(user.clone(), "phone").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    new.router.connect(user.clone(), "phone").await.unwrap();
    let sent = sender.await.unwrap();
    assert_eq!(sent.unconfirmed, 0, "every send was confirmed or stored");
    let at_old = drain_quiet(old, Duration::from_secs(3)).await;
    let rest: HashSet<_> = sent.confirmed.difference(&at_old.ids).copied().collect();
    let at_new = drain(new, &rest, Duration::from_secs(60)).await;
    let reresolved = at_new
        .headers
        .iter()
        .filter(|h| h.contains_key(switchyard::regions::reresolve::HOPS_HEADER))
        .count();
    Moved {
        sent: sent.confirmed.len(),
        at_old: at_old.ids.len(),
        at_new: at_new.ids.len(),
        reresolved,
        vias: at_new.vias,
    }
}

/// The `q` quantile (0..1) of `samples`, in milliseconds.
pub fn quantile_ms(samples: &[Duration], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}
