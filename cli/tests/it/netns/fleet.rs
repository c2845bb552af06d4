//! The namespaced fleet: per region a `redis-server` and `switchyard
//! serve` processes inside its namespace, a three-node Kafka cluster inside
//! `sy-us`, and Toxiproxy in the root namespace as the only way from `eu`
//! to that cluster (40 ms each way). The test drives it as gateways would,
//! over gRPC from the root namespace. Everything is stopped on drop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard::proto::{self, gateway_client::GatewayClient};
use tonic::transport::Channel;

use super::{Namespace, NsRedis, Ports, EU, US};
use crate::process::Served;
use testkit::region_fleet::{self, RegionSpec};
use testkit::servers::PrivateKafka;
use testkit::sidecars;
use testkit::toxiproxy::Link;

/// Added each way on every EU<->US link.
pub const ONE_WAY: Duration = Duration::from_millis(40);

/// The fleet's processes. Fields drop in order: sidecars before the
/// brokers they talk to.
pub struct NsFleet {
    /// Unique to this run: gateway ids, users, topics and groups carry it.
    pub run: String,
    pub ports: Ports,
    sidecars: HashMap<&'static str, (&'static Namespace, Served)>,
    /// Held for their drop, which deletes the proxies.
    _links: Vec<Link>,
    kafka: PrivateKafka,
    pub redis: HashMap<&'static str, NsRedis>,
    configs: tempfile::TempDir,
}

impl NsFleet {
    /// Starts both regions' Redis, Kafka in `us`, the WAN links and one
    /// sidecar per `(namespace, node name)`.
    pub async fn start(nodes: &[(&'static Namespace, &'static str)]) -> Self {
        let ports = Ports::pick();
        let run = ulid::Ulid::new().to_string().to_lowercase();
        let redis = [&US, &EU]
            .into_iter()
            .map(|ns| (ns.region, NsRedis::start(ns, ports.redis)))
            .collect();
        let kafka = PrivateKafka::start_in_netns(
            US.name,
            ports.kafka,
            ports.proxy,
            &US.inner.to_string(),
            &EU.root.to_string(),
        )
        .await;
        let links = (0..3)
            .map(|n| {
                Link::between(
                    &format!("netns-eu-kafka-{n}-{run}"),
                    (EU.root, ports.proxy + n).into(),
                    (US.inner, ports.wan + n).into(),
                    ONE_WAY,
                )
            })
            .collect();
        let mut fleet = Self {
            run,
            ports,
            sidecars: HashMap::new(),
            _links: links,
            kafka,
            redis,
            configs: tempfile::tempdir().expect("temp dir"),
        };
        for (ns, node) in nodes {
            // Served waits for the log line synchronously; the runtime's
            // other worker goes on meanwhile.
            let served = tokio::task::block_in_place(|| fleet.serve(ns, node));
            fleet.sidecars.insert(node, (ns, served));
        }
        fleet
    }

    /// The bootstrap list a region's nodes use: the cluster's own loopback
    /// listeners in `us`, the proxies on the root side of `eu`'s pair.
    pub fn brokers(&self, ns: &Namespace) -> String {
        if ns.region == US.region {
            return self.kafka.brokers();
        }
        (0..3)
            .map(|n| format!("{}:{}", ns.root, self.ports.proxy + n))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `switchyard serve` for `node` inside `ns`: the settings of
    /// `region_fleet::settings` (the region's Redis for the store and
    /// same-region Pub/Sub, Kafka cross-region, presence replicated on this
    /// run's topic), gRPC on the namespace's veth address so the test
    /// reaches it from the root namespace.
    fn serve(&self, ns: &Namespace, node: &str) -> Served {
        let spec = RegionSpec {
            name: ns.region,
            kafka: self.brokers(ns),
        };
        let redis = &self.redis[ns.region];
        let mut settings = region_fleet::settings(&spec, &redis.url(), &self.run);
        // Reachable from the root namespace only, never from the other
        // region, and no tokens in a test: said explicitly, as a
        // non-loopback listen requires.
        settings.sidecar.listen = SocketAddr::from((ns.inner, 0));
        settings.sidecar.allow_unauthenticated = true;
        settings.sidecar.readiness_grace = Duration::ZERO;
        let text = toml::to_string_pretty(&settings).expect("settings as TOML");
        let path = self.configs.path().join(format!("{node}.toml"));
        std::fs::write(&path, text).expect("write the sidecar's config");
        let listen = settings.sidecar.listen.to_string();
        Served::start_in_netns(
            ns.name,
            Some(&path),
            &[("SWITCHYARD__SIDECAR__LISTEN", listen.as_str())],
        )
    }

    /// A gateway `{node}-{run}` attached to `node`'s sidecar in its region,
    /// heartbeating every 3 s as a gateway does.
    pub async fn gateway(&self, node: &str) -> Gw {
        let (ns, served) = &self.sidecars[node];
        let id = format!("{node}-{}", self.run);
        let mut client = connect(served.grpc).await;
        let deliveries = sidecars::attach(&mut client, &id, ns.region).await;
        let heartbeat = {
            let (mut client, id) = (client.clone(), id.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    let request = proto::HeartbeatRequest {
                        gateway_id: id.clone(),
                    };
                    let _ = client.heartbeat(request).await;
                }
            })
        };
        Gw {
            id,
            client,
            deliveries,
            heartbeat,
        }
    }

    /// A user name unique to this run.
    pub fn user(&self, name: &str) -> String {
        format!("{name}-{}", self.run)
    }
}

/// A gRPC channel to a sidecar, within 10 s.
async fn connect(addr: SocketAddr) -> GatewayClient<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("an endpoint")
        .connect_timeout(Duration::from_secs(10));
    let channel = tokio::time::timeout(Duration::from_secs(10), endpoint.connect())
        .await
        .expect("connected within 10 s")
        .unwrap_or_else(|e| panic!("sidecar at {addr}: {e}"));
    GatewayClient::new(channel)
}

/// One test gateway: its client, Attach stream and heartbeat.
pub struct Gw {
    pub id: String,
    pub client: GatewayClient<Channel>,
    pub deliveries: sidecars::Deliveries,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Gw {
    pub async fn online(&mut self, user: &str) {
        sidecars::online(&mut self.client, &self.id, user).await;
    }

    pub async fn offline(&mut self, user: &str) {
        let request = proto::OfflineRequest {
            gateway_id: self.id.clone(),
            user: user.into(),
            device: "phone".into(),
        };
        self.client.offline(request).await.expect("Offline");
    }

    /// Sends `payload` from `from` (hosted here) to user `to`, high
    /// priority (broker-acked).
    pub async fn send(&mut self, from: &str, to: &str, payload: &str) -> proto::SendOutcome {
        let envelope = proto::Envelope {
            priority: proto::Priority::High as i32,
            ..sidecars::message(from, to, payload)
        };
        sidecars::send(&mut self.client, &self.id, envelope).await
    }

    /// Polls this gateway's sidecar (its Presence API, every 2 ms) until
    /// it lists `user` on `gateway`; returns how long that took.
    pub async fn wait_located(&mut self, user: &str, gateway: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let request = proto::PresenceRequest {
                gateway_id: self.id.clone(),
                users: vec![user.into()],
            };
            let found = self
                .client
                .presence(request)
                .await
                .expect("Presence")
                .into_inner();
            let here = found
                .users
                .iter()
                .flat_map(|u| &u.sessions)
                .any(|s| s.gateway == gateway);
            if here {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{} never saw {user} on {gateway} within {within:?}: {found:?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}
