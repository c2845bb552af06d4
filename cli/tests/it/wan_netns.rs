//! Two regions in network namespaces, separated by the network and not
//! only by configuration (issue 20). `sy-us` and `sy-eu`
//! (`scripts/services/netns.sh start`) each run their own `redis-server`
//! and `switchyard serve` processes; a three-node Kafka cluster runs in
//! `sy-us`, and `eu` reaches it only through Toxiproxy in the root
//! namespace (40 ms added each way, `scripts/services/toxiproxy.sh`). The
//! namespaces have no route to each other, so the test can assert that
//! `eu` cannot connect to anything of `us` but the proxies. It drives the
//! sidecars as gateways do, over gRPC from the root namespace, and counts
//! messages by id: same-region eu -> eu over Redis, cross-region both
//! ways over Kafka, a user moving from us to eu while eu sends (0 lost);
//! it measures p50/p99 of each route and presence replication lag.
//!
//! Ports: the block 29000-29999, in slots so a leftover of a dead run
//! cannot break the next (`crate::netns::Ports`): Kafka clients
//! 29000+3k.. in `sy-us` (controllers +100, WAN listeners on 10.77.1.2
//! +200), proxies on 10.77.2.1 at +300, each region's Redis on 29400+k;
//! the sidecars listen on their namespace's veth address, port 0.
//! Set `SWITCHYARD_WAN_REPORT=dir` to write the figures
//! (`wan-netns.json`) there (docs/BENCHMARKS.md).

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(feature = "it-netns")]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::netns::count::{drain, drain_quiet, drain_within, Sent};
use crate::netns::fleet::{Gw, NsFleet};
use crate::netns::{Namespace, EU, US};
use region_fleet::quantile_ms;
use testkit::region_fleet;
use testkit::sidecars;

/// The whole test, bounded: a hang fails with this name, and everything
/// it started is dropped (killed) with it.
const WHOLE: Duration = Duration::from_secs(170);
/// Messages per latency series.
const N: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_in_network_namespaces() {
    US.require();
    EU.require();
    tokio::time::timeout(WHOLE, run())
        .await
        .unwrap_or_else(|_| panic!("the namespaced fleet did not finish within {WHOLE:?}"));
}

async fn run() {
    let started = Instant::now();
    let fleet = NsFleet::start(&[(&US, "us1"), (&EU, "eu1"), (&EU, "eu2")]).await;
    let ports = fleet.ports;
    assert_isolated(&fleet);
    println!("fleet up and isolated after {:?}", started.elapsed());

    let mut us1 = fleet.gateway("us1").await;
    let mut eu1 = fleet.gateway("eu1").await;
    let mut eu2 = fleet.gateway("eu2").await;
    let mut report = Report::default();

    // 1. Presence replication lag, each way: Online in one region, then
    //    poll the other region's Presence API until it lists the session.
    for i in 0..40 {
        let user = fleet.user(&format!("p-us-{i}"));
        us1.online(&user).await;
        let lag = eu1
            .wait_located(&user, &us1.id, Duration::from_secs(20))
            .await;
        report.lag_us_to_eu.push(lag);
        let user = fleet.user(&format!("p-eu-{i}"));
        eu2.online(&user).await;
        let lag = us1
            .wait_located(&user, &eu2.id, Duration::from_secs(20))
            .await;
        report.lag_eu_to_us.push(lag);
    }

    // 2. Delivery per route, counted by id, and its latency (creation by
    //    the sending sidecar to acceptance by the receiving one).
    let (alice, bob) = (fleet.user("alice"), fleet.user("bob"));
    let (eu_sender, us_sender) = (fleet.user("eu-sender"), fleet.user("us-sender"));
    us1.online(&alice).await;
    us1.online(&us_sender).await;
    eu2.online(&bob).await;
    eu1.online(&eu_sender).await;
    eu1.wait_located(&alice, &us1.id, Duration::from_secs(20))
        .await;
    us1.wait_located(&bob, &eu2.id, Duration::from_secs(20))
        .await;
    eu1.wait_located(&bob, &eu2.id, Duration::from_secs(20))
        .await;

    let sent = send_n(&mut eu1, &eu_sender, &bob, N).await;
    assert!(sent.all_via("redis"), "eu -> eu: {:?}", sent.vias);
    let got = drain(&mut eu2, &sent.confirmed, Duration::from_secs(30)).await;
    assert!(got.vias.keys().all(|v| v == "redis"), "{:?}", got.vias);
    report.same_region = got.latencies;

    let sent = send_n(&mut eu1, &eu_sender, &alice, N).await;
    assert!(sent.all_via("kafka"), "eu -> us: {:?}", sent.vias);
    let got = drain(&mut us1, &sent.confirmed, Duration::from_secs(60)).await;
    assert!(got.vias.keys().all(|v| v == "kafka"), "{:?}", got.vias);
    report.eu_to_us = got.latencies;

    let sent = send_n(&mut us1, &us_sender, &bob, N).await;
    assert!(sent.all_via("kafka"), "us -> eu: {:?}", sent.vias);
    let got = drain(&mut eu2, &sent.confirmed, Duration::from_secs(60)).await;
    assert!(got.vias.keys().all(|v| v == "kafka"), "{:?}", got.vias);
    report.us_to_eu = got.latencies;

    // 3. carol moves from us to eu while eu sends to her: every confirmed
    //    message reaches one of her gateways; the same id twice is a
    //    duplicate (gateways dedupe), a missing one is lost.
    let carol = fleet.user("carol");
    us1.online(&carol).await;
    eu1.wait_located(&carol, &us1.id, Duration::from_secs(20))
        .await;
    let sender = {
        let (mut client, id) = (eu1.client.clone(), eu1.id.clone());
        let (from, to) = (eu_sender.clone(), carol.clone());
        tokio::spawn(async move { paced(&mut client, &id, &from, &to, 300).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    us1.offline(&carol).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    eu2.online(&carol).await;
    let sent = sender.await.expect("the sender task");
    assert_eq!(sent.unconfirmed, 0, "every send was confirmed or stored");
    let at_old = drain_quiet(&mut us1, &sent.confirmed, Duration::from_secs(3)).await;
    let rest: HashSet<_> = sent.confirmed.difference(&at_old.ids).cloned().collect();
    let at_new = drain_within(&mut eu2, &rest, &sent.confirmed, Duration::from_secs(60)).await;
    let both = at_old.ids.intersection(&at_new.ids).count();
    let lost = sent
        .confirmed
        .iter()
        .filter(|id| !at_old.ids.contains(*id) && !at_new.ids.contains(*id))
        .count();
    assert_eq!(lost, 0, "confirmed and never delivered");
    report.moved = Some(Moved {
        sent: sent.confirmed.len(),
        offline: sent.offline,
        at_old: at_old.ids.len(),
        at_new: at_new.ids.len() - both,
        reresolved: at_new.reresolved,
        duplicates: at_old.duplicates + at_new.duplicates + both,
    });

    report.print_and_write(&ports);
    println!("done after {:?}", started.elapsed());
}

/// The network, not the config, keeps the regions apart: from `sy-eu`
/// nothing of `us` is reachable (its Redis, its brokers' WAN listeners,
/// the root end of its pair), only the proxies; and the other way round.
fn assert_isolated(fleet: &NsFleet) {
    let us_redis = fleet.redis[US.region].veth_addr();
    let eu_redis = fleet.redis[EU.region].veth_addr();
    let wan: SocketAddr = (US.inner, fleet.ports.wan).into();
    let proxy: SocketAddr = (EU.root, fleet.ports.proxy).into();
    for (from, to, what) in [
        (&EU, us_redis, "us's Redis"),
        (&EU, wan, "a us broker's WAN listener"),
        (
            &EU,
            (US.root, fleet.ports.proxy).into(),
            "the root end of us's pair",
        ),
        (&US, eu_redis, "eu's Redis"),
    ] {
        refused(from, to, what);
    }
    // eu's loopback has no broker: its Kafka is the proxies alone.
    refused(
        &EU,
        (std::net::Ipv4Addr::LOCALHOST, fleet.ports.kafka).into(),
        "a broker on eu's loopback",
    );
    EU.connect_from(proxy)
        .unwrap_or_else(|e| panic!("eu reaches the WAN proxy at {proxy}: {e}"));
    for (ns, redis) in [(&US, us_redis), (&EU, eu_redis)] {
        std::net::TcpStream::connect_timeout(&redis, Duration::from_secs(3)).unwrap_or_else(|e| {
            panic!(
                "{}'s Redis at {redis} from the root namespace: {e}",
                ns.region
            )
        });
    }
}

fn refused(from: &Namespace, to: SocketAddr, what: &str) {
    match from.connect_from(to) {
        Ok(()) => panic!(
            "{} connected to {what} at {to}: the regions are not isolated",
            from.name
        ),
        Err(said) => println!("{} -> {what} ({to}): {said}", from.name),
    }
}

/// `n` messages from `from` (on `gw`) to `to`, each awaited.
async fn send_n(gw: &mut Gw, from: &str, to: &str, n: usize) -> Sent {
    let mut sent = Sent::default();
    for i in 0..n {
        sent.record(&gw.send(from, to, &format!("msg {i}")).await);
    }
    assert_eq!(
        sent.unconfirmed, 0,
        "{from} -> {to}: sends neither confirmed nor stored"
    );
    sent
}

/// `n` messages, 2 ms apart, on a client of its own (the test moves the
/// user meanwhile).
async fn paced(
    client: &mut switchyard::proto::gateway_client::GatewayClient<tonic::transport::Channel>,
    gateway: &str,
    from: &str,
    to: &str,
    n: usize,
) -> Sent {
    let mut sent = Sent::default();
    for i in 0..n {
        let envelope = switchyard::proto::Envelope {
            priority: switchyard::proto::Priority::High as i32,
            ..sidecars::message(from, to, &format!("moving {i}"))
        };
        sent.record(&sidecars::send(client, gateway, envelope).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    sent
}

/// What the move counted.
#[derive(Debug)]
struct Moved {
    sent: usize,
    offline: usize,
    at_old: usize,
    /// Only at the new gateway.
    at_new: usize,
    reresolved: usize,
    duplicates: usize,
}

#[derive(Default)]
struct Report {
    lag_us_to_eu: Vec<Duration>,
    lag_eu_to_us: Vec<Duration>,
    same_region: Vec<Duration>,
    eu_to_us: Vec<Duration>,
    us_to_eu: Vec<Duration>,
    moved: Option<Moved>,
}

impl Report {
    fn print_and_write(&self, ports: &crate::netns::Ports) {
        let mut json = serde_json::Map::new();
        println!("ports: {ports:?}");
        println!("{:<32} {:>6} {:>9} {:>9}", "what", "n", "p50 ms", "p99 ms");
        for (name, samples) in [
            ("same region eu -> eu (Redis)", &self.same_region),
            ("cross region eu -> us (Kafka)", &self.eu_to_us),
            ("cross region us -> eu (Kafka)", &self.us_to_eu),
            ("presence us -> eu", &self.lag_us_to_eu),
            ("presence eu -> us", &self.lag_eu_to_us),
        ] {
            let (p50, p99) = (quantile_ms(samples, 0.5), quantile_ms(samples, 0.99));
            println!("{name:<32} {:>6} {p50:>9.1} {p99:>9.1}", samples.len());
            json.insert(
                name.into(),
                serde_json::json!({ "n": samples.len(), "p50_ms": p50, "p99_ms": p99 }),
            );
        }
        if let Some(m) = &self.moved {
            println!(
                "user moved us -> eu: confirmed {} (stored offline {}), at old {}, only at new {} \
                 (re-resolved {}), duplicates {}, lost 0",
                m.sent, m.offline, m.at_old, m.at_new, m.reresolved, m.duplicates
            );
            json.insert(
                "moved".into(),
                serde_json::json!({
                    "confirmed": m.sent, "offline": m.offline, "at_old": m.at_old,
                    "only_at_new": m.at_new, "reresolved": m.reresolved,
                    "duplicates": m.duplicates, "lost": 0
                }),
            );
        }
        let Some(dir) = std::env::var_os("SWITCHYARD_WAN_REPORT") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("report dir");
        std::fs::write(
            dir.join("wan-netns.json"),
            serde_json::to_string_pretty(&json).expect("json"),
        )
        .expect("write wan-netns.json");
    }
}
