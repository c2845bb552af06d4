//! Two regions over a simulated WAN. Kafka sits in `us`; `eu` reaches it
//! only through Toxiproxy links that add 40 ms each way (an EU<->US round
//! trip of 80 ms). Each region has its own Redis, reached directly:
//! nothing of same-region traffic or presence lookups crosses the WAN.
//!
//! One test, in phases, on one private Kafka cluster (ports 27092-27094,
//! controllers 27192-27194, WAN listeners 27292-27294, proxies
//! 27392-27394): presence replication lag, delivery latency per route, the
//! WAN cut for 10 s under traffic both ways (0 confirmed lost), and a user
//! moving region. Needs `scripts/services/toxiproxy.sh start` (scripts/test.sh
//! runs it). Set `SWITCHYARD_WAN_REPORT=dir` to write the figures
//! (`wan.json`) and their plot (`wan.svg`) there (docs/BENCHMARKS.md).

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(all(feature = "it-redis", feature = "it-kafka", feature = "it-toxiproxy"))]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use region_fleet::{drain, move_user, quantile_ms, Fleet, Gateway, RegionSpec, Sent};
use switchyard::transport::TransportKind;
use switchyard::{Destination, Envelope, Priority, UserId};
use testkit::region_fleet;
use testkit::servers;
use testkit::toxiproxy::Link;

const KAFKA_BASE: u16 = 27092;
const WAN_BASE: u16 = 27392;
const ONE_WAY: Duration = Duration::from_millis(40);
const CUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_over_a_simulated_wan() {
    let kafka = servers::PrivateKafka::start_with_wan(KAFKA_BASE, WAN_BASE).await;
    let links: Vec<Link> = (0..3)
        .map(|n| {
            Link::new(
                &format!("eu-kafka-{n}"),
                WAN_BASE + n,
                KAFKA_BASE + 200 + n,
                ONE_WAY,
            )
        })
        .collect();
    let eu_brokers = links
        .iter()
        .map(|l| l.listen.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let eu = RegionSpec {
        name: "eu",
        kafka: eu_brokers,
    };
    let us = RegionSpec {
        name: "us",
        kafka: kafka.brokers(),
    };
    // A cut link fails a publish within ~2 s (then the offline store
    // takes the message) instead of the default 5 s x 4 attempts.
    let fleet = Fleet::start_with(&[eu, us], |s| {
        s.delivery.publish_timeout = Duration::from_secs(2);
        s.delivery.retries = 0;
        if let Some(k) = s.transports.kafka.as_mut() {
            k.delivery_timeout = Duration::from_secs(1);
            k.metadata_refresh = Duration::from_secs(2);
        }
        if let Some(r) = s.regions.as_mut() {
            r.sweep_interval = Duration::from_millis(500);
        }
    })
    .await;
    let eu1 = fleet.gateway("eu", "eu1").await;
    let mut eu2 = fleet.gateway("eu", "eu2").await;
    let mut us1 = fleet.gateway("us", "us1").await;
    let mut report = Report::default();

    // 1. Presence replication lag, each way: connect, then poll the other
    //    region's store until it lists the session.
    for i in 0..40 {
        let user = fleet.user(&format!("p-us-{i}"));
        us1.router.connect(user.clone(), "phone").await.unwrap();
        let lag = fleet
            .wait_located("eu", &user, us1.id(), Duration::from_secs(20))
            .await;
        report.lag_us_to_eu.push(lag);
        let user = fleet.user(&format!("p-eu-{i}"));
        eu2.router.connect(user.clone(), "phone").await.unwrap();
        let lag = fleet
            .wait_located("us", &user, eu2.id(), Duration::from_secs(20))
            .await;
        report.lag_eu_to_us.push(lag);
    }

    // 2. Delivery latency per route (creation to the receiving inbox).
    let (alice, bob) = (fleet.user("alice"), fleet.user("bob"));
    us1.router.connect(alice.clone(), "phone").await.unwrap();
    eu2.router.connect(bob.clone(), "phone").await.unwrap();
    fleet
        .wait_located("eu", &alice, us1.id(), Duration::from_secs(20))
        .await;
    fleet
        .wait_located("us", &bob, eu2.id(), Duration::from_secs(20))
        .await;
    for (from, to, user, samples) in [
        (&eu1, &mut eu2, &bob, &mut report.same_region),
        (&eu1, &mut us1, &alice, &mut report.eu_to_us),
    ] {
        let sent = region_fleet::send(from, user, 200, Priority::High).await;
        assert_eq!(sent.unconfirmed, 0);
        samples.extend(
            drain(to, &sent.confirmed, Duration::from_secs(60))
                .await
                .latencies,
        );
    }
    let sent = region_fleet::send(&us1, &bob, 200, Priority::High).await;
    assert!(sent.all_via(TransportKind::KAFKA), "{:?}", sent.vias);
    report.us_to_eu.extend(
        drain(&mut eu2, &sent.confirmed, Duration::from_secs(60))
            .await
            .latencies,
    );

    // 3. The EU<->US links cut for 10 s while traffic flows three ways.
    let cut_start = Instant::now();
    for link in &links {
        link.set_enabled(false);
    }
    let (cross_eu, cross_us, same_eu) = tokio::join!(
        paced(&eu1, &alice, CUT),
        paced(&us1, &bob, CUT),
        paced(&eu1, &bob, CUT),
    );
    for link in &links {
        link.set_enabled(true);
    }
    let restored = Instant::now();
    println!("link cut for {:?}", restored - cut_start);
    // Same-region traffic never needed the WAN: all of it went over the
    // region's Redis, confirmed, while the links were down.
    assert!(same_eu.all_via(TransportKind::REDIS), "{:?}", same_eu.vias);
    assert_eq!(same_eu.unconfirmed + same_eu.offline, 0);
    for sent in [&cross_eu, &cross_us] {
        assert_eq!(sent.unconfirmed, 0, "a send neither confirmed nor stored");
    }
    let at_us1 = drain(&mut us1, &cross_eu.confirmed, Duration::from_secs(90)).await;
    let to_bob: HashSet<_> = cross_us
        .confirmed
        .union(&same_eu.confirmed)
        .copied()
        .collect();
    let at_eu2 = drain(&mut eu2, &to_bob, Duration::from_secs(90)).await;
    report.cut = vec![
        (
            "eu -> us (cut)".into(),
            cross_eu.confirmed.len(),
            cross_eu.offline,
            at_us1.ids.len(),
        ),
        (
            "us -> eu (cut)".into(),
            cross_us.confirmed.len(),
            cross_us.offline,
            at_eu2.ids.intersection(&cross_us.confirmed).count(),
        ),
        (
            "eu -> eu (cut)".into(),
            same_eu.confirmed.len(),
            same_eu.offline,
            at_eu2.ids.intersection(&same_eu.confirmed).count(),
        ),
    ];
    report.recovered_in = restored.elapsed();

    // 4. A user moves from us to eu under the WAN delay.
    let carol = fleet.user("carol");
    us1.router.connect(carol.clone(), "phone").await.unwrap();
    fleet
        .wait_located("eu", &carol, us1.id(), Duration::from_secs(20))
        .await;
    let moved = move_user(&eu1, &mut us1, &mut eu2, &carol, 300).await;
    assert_eq!(moved.at_old + moved.at_new, moved.sent);
    report.moved = Some((moved.sent, moved.at_old, moved.at_new, moved.reresolved));

    report.print_and_write();
    drop(links);
}

/// Sends to `user` from `from` every 50 ms for `during`, each send in its
/// own task (a send over a cut link waits for its timeout).
async fn paced(from: &Gateway, user: &UserId, during: Duration) -> Sent {
    let start = Instant::now();
    let mut tasks = Vec::new();
    while start.elapsed() < during {
        let envelope = Envelope::new(
            "pacer",
            from.id().clone(),
            Destination::User(user.clone()),
            "during the cut",
        )
        .with_priority(Priority::High);
        let router = from.router.clone();
        tasks.push(tokio::spawn(async move {
            router.send(envelope).await.expect("send")
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sent = Sent::default();
    for task in tasks {
        sent.record(task.await.unwrap());
    }
    sent
}

#[derive(Default)]
struct Report {
    lag_us_to_eu: Vec<Duration>,
    lag_eu_to_us: Vec<Duration>,
    same_region: Vec<Duration>,
    eu_to_us: Vec<Duration>,
    us_to_eu: Vec<Duration>,
    /// (what, confirmed, of them stored offline, delivered).
    cut: Vec<(String, usize, usize, usize)>,
    recovered_in: Duration,
    /// (sent, at the old gateway, at the new, re-resolved).
    moved: Option<(usize, usize, usize, usize)>,
}

impl Report {
    fn series(&self) -> [(&'static str, &Vec<Duration>); 5] {
        [
            ("same region eu -> eu (Redis)", &self.same_region),
            ("cross region eu -> us (Kafka)", &self.eu_to_us),
            ("cross region us -> eu (Kafka)", &self.us_to_eu),
            ("presence us -> eu", &self.lag_us_to_eu),
            ("presence eu -> us", &self.lag_eu_to_us),
        ]
    }

    fn print_and_write(&self) {
        let mut json = serde_json::Map::new();
        println!("{:<32} {:>6} {:>9} {:>9}", "what", "n", "p50 ms", "p99 ms");
        for (name, samples) in self.series() {
            let (p50, p99) = (quantile_ms(samples, 0.5), quantile_ms(samples, 0.99));
            println!("{name:<32} {:>6} {p50:>9.1} {p99:>9.1}", samples.len());
            json.insert(
                name.into(),
                serde_json::json!({ "n": samples.len(), "p50_ms": p50, "p99_ms": p99 }),
            );
        }
        for (what, confirmed, offline, delivered) in &self.cut {
            println!(
                "{what:<32} confirmed {confirmed} (stored offline {offline}), delivered {delivered}, lost {}",
                confirmed - delivered
            );
            json.insert(
                what.clone(),
                serde_json::json!({ "confirmed": confirmed, "offline": offline, "delivered": delivered }),
            );
        }
        println!(
            "all delivered {:?} after the links came back",
            self.recovered_in
        );
        json.insert(
            "recovered_after_s".into(),
            serde_json::json!(self.recovered_in.as_secs_f64()),
        );
        if let Some((sent, old, new, reresolved)) = self.moved {
            println!("user moved us -> eu: sent {sent}, at old {old}, at new {new} (re-resolved {reresolved}), lost 0");
            json.insert(
                "moved".into(),
                serde_json::json!({ "sent": sent, "at_old": old, "at_new": new, "reresolved": reresolved }),
            );
        }
        let Some(dir) = std::env::var_os("SWITCHYARD_WAN_REPORT") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("report dir");
        std::fs::write(
            dir.join("wan.json"),
            serde_json::to_string_pretty(&json).expect("json"),
        )
        .expect("write wan.json");
        self.plot(&dir.join("wan.svg"));
    }

    /// Latency CDFs, one line per series.
    fn plot(&self, path: &std::path::Path) {
        use plotters::prelude::*;
        let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
        root.fill(&WHITE).unwrap();
        let max = self
            .series()
            .iter()
            .map(|(_, s)| quantile_ms(s, 0.99))
            .fold(0.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "2 regions, 40 ms one way EU<->US (Toxiproxy): latency CDF",
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max, 0.0..1.0)
            .unwrap();
        chart
            .configure_mesh()
            .x_desc("milliseconds")
            .y_desc("fraction")
            .draw()
            .unwrap();
        for (i, (name, samples)) in self.series().into_iter().enumerate() {
            let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len() as f64;
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(std::iter::once(PathElement::new(
                    sorted
                        .iter()
                        .enumerate()
                        .map(|(k, ms)| (ms.min(max), (k + 1) as f64 / n))
                        .collect::<Vec<_>>(),
                    color.stroke_width(2),
                )))
                .unwrap()
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .unwrap();
        root.present().unwrap();
    }
}
