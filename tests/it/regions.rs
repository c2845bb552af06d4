//! Two regions, each with its own Redis (presence, same-region Pub/Sub,
//! offline queues), Kafka between them, presence replicated over Kafka.
//! Every message is counted by id: none confirmed may be lost, none may
//! arrive twice.
//!
//! Needs the shared Kafka cluster of `scripts/services/kafka.sh start`; each
//! test runs its own two `redis-server`s, which it stops.

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(all(feature = "it-redis", feature = "it-kafka"))]

use std::collections::HashSet;
use std::time::Duration;

use region_fleet::{drain, drain_quiet, move_user, send, Fleet, RegionSpec};
use switchyard::presence::Session;
use switchyard::regions::reresolve::HOPS_HEADER;
use switchyard::regions::{Membership, Snapshot};
use switchyard::transport::Ack;
use switchyard::transport::TransportKind;
use switchyard::{Destination, Envelope, Priority, Via};
use testkit::region_fleet;

/// A user online in `us` is found from `eu` through the replica alone, and
/// messages reach them over Kafka; same-region messages go over the
/// region's own Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_online_in_one_region_is_reached_from_the_other() {
    let fleet = Fleet::start(&[RegionSpec::direct("eu"), RegionSpec::direct("us")]).await;
    let eu1 = fleet.gateway("eu", "eu1").await;
    let mut eu2 = fleet.gateway("eu", "eu2").await;
    let mut us1 = fleet.gateway("us", "us1").await;
    let alice = fleet.user("alice");
    let bob = fleet.user("bob");
    us1.router.connect(alice.clone(), "phone").await.unwrap();
    eu2.router.connect(bob.clone(), "phone").await.unwrap();
    let lag = fleet
        .wait_located("eu", &alice, us1.id(), Duration::from_secs(20))
        .await;
    println!("alice's presence reached eu in {lag:?}");

    let cross = send(&eu1, &alice, 50, Priority::High).await;
    let same = send(&eu1, &bob, 50, Priority::High).await;
    assert!(cross.all_via(TransportKind::KAFKA), "{:?}", cross.vias);
    assert!(same.all_via(TransportKind::REDIS), "{:?}", same.vias);
    let got = drain(&mut us1, &cross.confirmed, Duration::from_secs(30)).await;
    assert_eq!(
        got.vias,
        HashSet::from([Via::Transport(TransportKind::KAFKA)])
    );
    let got = drain(&mut eu2, &same.confirmed, Duration::from_secs(30)).await;
    assert_eq!(
        got.vias,
        HashSet::from([Via::Transport(TransportKind::REDIS)])
    );
    // The US Redis never saw an EU gateway: same-region state stays home.
    assert!(
        fleet.redis_keys("us", eu2.id()).await.is_empty(),
        "eu2's keys in the us Redis"
    );
    // A node serves its own region's gateways only.
    let err = fleet.try_gateway("eu", "us9").await.err().expect("refused");
    assert!(
        err.to_string()
            .contains("regions.local: this node serves region eu"),
        "{err}"
    );
}

/// A message that reaches a gateway its user is not on (as one routed on
/// stale presence does) is routed again from there, to where the user is,
/// and marked as such; the old gateway never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_on_stale_presence_is_routed_again_where_it_lands() {
    let fleet = Fleet::start(&[RegionSpec::direct("eu"), RegionSpec::direct("us")]).await;
    let mut eu2 = fleet.gateway("eu", "eu2").await;
    let mut us1 = fleet.gateway("us", "us1").await;
    let dan = fleet.user("dan");
    eu2.router.connect(dan.clone(), "phone").await.unwrap();
    fleet
        .wait_located("us", &dan, eu2.id(), Duration::from_secs(20))
        .await;
    // Straight onto us1's topic, as a sender with a stale cache would.
    let kafka = us1
        .router
        .backends()
        .transports()
        .get(TransportKind::KAFKA)
        .unwrap()
        .clone();
    let mut ids = HashSet::new();
    let mut batch = Vec::new();
    for i in 0..10 {
        let envelope = Envelope::new(
            "sender",
            "eu1",
            Destination::User(dan.clone()),
            format!("stale {i}"),
        );
        ids.insert(envelope.id);
        batch.push(envelope.encode());
    }
    kafka
        .publish(us1.id(), &batch, Ack::Confirmed)
        .await
        .unwrap();
    let got = drain(&mut eu2, &ids, Duration::from_secs(30)).await;
    assert!(
        got.headers
            .iter()
            .all(|h| h.get(HOPS_HEADER).map(String::as_str) == Some("1")),
        "{:?}",
        got.headers
    );
    let at_us = drain_quiet(&mut us1, Duration::from_millis(500)).await;
    assert!(at_us.ids.is_empty(), "us1 delivered {:?}", at_us.ids);
}

/// A user moves from `us` to `eu` while `eu1` keeps sending to them:
/// nothing confirmed is lost or delivered twice (`move_user` checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_moving_between_regions_loses_nothing() {
    let fleet = Fleet::start(&[RegionSpec::direct("eu"), RegionSpec::direct("us")]).await;
    let eu1 = fleet.gateway("eu", "eu1").await;
    let mut eu2 = fleet.gateway("eu", "eu2").await;
    let mut us1 = fleet.gateway("us", "us1").await;
    let carol = fleet.user("carol");
    us1.router.connect(carol.clone(), "phone").await.unwrap();
    fleet
        .wait_located("eu", &carol, us1.id(), Duration::from_secs(20))
        .await;
    let moved = move_user(&eu1, &mut us1, &mut eu2, &carol, 400).await;
    assert_eq!(moved.at_old + moved.at_new, moved.sent);
    println!(
        "sent {} | at us1 {} | at eu2 {} (re-resolved {}, via {:?}) | lost 0",
        moved.sent, moved.at_old, moved.at_new, moved.reresolved, moved.vias
    );
}

/// Messages stored offline in `eu` reach the user when they come online in
/// `us`: handed over as soon as their presence replicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_follow_the_user_to_another_region() {
    let fleet = Fleet::start(&[RegionSpec::direct("eu"), RegionSpec::direct("us")]).await;
    let eu1 = fleet.gateway("eu", "eu1").await;
    let mut us1 = fleet.gateway("us", "us1").await;
    let erin = fleet.user("erin");
    let stored = send(&eu1, &erin, 30, Priority::High).await;
    assert_eq!(stored.offline, 30, "erin is offline everywhere");
    us1.router.connect(erin.clone(), "laptop").await.unwrap();
    let got = drain(&mut us1, &stored.confirmed, Duration::from_secs(30)).await;
    assert_eq!(
        got.vias,
        HashSet::from([Via::Transport(TransportKind::KAFKA)])
    );
}

/// A group with members in both regions: one message from `eu` reaches
/// each member's gateway once, the `us` one over Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_spanning_regions_reaches_every_gateway_once() {
    let fleet = Fleet::start(&[RegionSpec::direct("eu"), RegionSpec::direct("us")]).await;
    let eu1 = fleet.gateway("eu", "eu1").await;
    let mut eu2 = fleet.gateway("eu", "eu2").await;
    let mut us1 = fleet.gateway("us", "us1").await;
    let (frank, grace) = (fleet.user("frank"), fleet.user("grace"));
    let group = fleet.group("team");
    // Each joins in one region; membership replicates to the other.
    eu1.router.join(group.clone(), frank.clone()).await.unwrap();
    us1.router.join(group.clone(), grace.clone()).await.unwrap();
    eu2.router.connect(frank.clone(), "phone").await.unwrap();
    us1.router.connect(grace.clone(), "phone").await.unwrap();
    fleet.wait_distribution("eu", &group, us1.id()).await;
    let mut ids = HashSet::new();
    for i in 0..20 {
        let envelope = Envelope::new(
            frank.clone(),
            eu1.id().clone(),
            Destination::Group(group.clone()),
            format!("hello {i}"),
        )
        .with_priority(Priority::High);
        let report = eu1.router.send(envelope).await.unwrap();
        let switchyard::Outcome::Routed { targets, .. } = report.outcome else {
            panic!("blocked")
        };
        let mut gateways: Vec<_> = targets.iter().map(|t| t.gateway.to_string()).collect();
        gateways.sort();
        assert_eq!(gateways, [eu2.id().to_string(), us1.id().to_string()]);
        assert!(targets.iter().all(|t| t.confirmed), "{targets:?}");
        ids.insert(report.id);
    }
    drain(&mut eu2, &ids, Duration::from_secs(30)).await;
    drain(&mut us1, &ids, Duration::from_secs(30)).await;
}

/// How often the re-sync tests re-sync.
const RESYNC: Duration = Duration::from_secs(2);

fn with_resync(settings: &mut switchyard::Settings) {
    settings
        .regions
        .as_mut()
        .expect("[regions]")
        .resync_interval = RESYNC;
}

/// A node that wrote a session and crashed before producing its snapshot
/// (here: the session written to `us`'s store, never marked) leaves `eu`
/// unaware of it; the periodic re-sync repairs that within its interval,
/// and messages from `eu` then reach the user, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_snapshot_is_repaired_by_the_resync() {
    let regions = [RegionSpec::direct("eu"), RegionSpec::direct("us")];
    let fleet = Fleet::start_with(&regions, with_resync).await;
    let eu1 = fleet.gateway("eu", "eu1").await;
    let mut us1 = fleet.gateway("us", "us1").await;
    let hana = fleet.user("hana");
    let session = Session {
        user: hana.clone(),
        device: "phone".into(),
        gateway: us1.id().clone(),
        region: "us".into(),
        since_micros: switchyard::envelope::now_micros(),
    };
    fleet.write_unreplicated("us", session).await;
    assert!(
        fleet.replicated("eu", &hana).await.is_empty(),
        "no snapshot of hana was produced"
    );
    let lag = fleet
        .wait_located("eu", &hana, us1.id(), RESYNC + Duration::from_secs(5))
        .await;
    println!("the re-sync ({RESYNC:?}) repaired hana's presence in eu after {lag:?}");

    let sent = send(&eu1, &hana, 30, Priority::High).await;
    assert_eq!(sent.confirmed.len(), 30, "{sent:?}");
    assert!(sent.all_via(TransportKind::KAFKA), "{:?}", sent.vias);
    drain(&mut us1, &sent.confirmed, Duration::from_secs(30)).await;
}

/// A snapshot of a user's old state that arrives after a newer one (as a
/// re-sync's, taken before the user moved and held up, would) changes
/// nothing where it is applied, and the re-syncs after it keep the new
/// state: `eu` never sees the user back on the gateway they left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_snapshot_of_old_state_never_overwrites_a_newer_one() {
    let regions = [RegionSpec::direct("eu"), RegionSpec::direct("us")];
    let fleet = Fleet::start_with(&regions, with_resync).await;
    let us1 = fleet.gateway("us", "us1").await;
    let us2 = fleet.gateway("us", "us2").await;
    let ivy = fleet.user("ivy");
    us1.router.connect(ivy.clone(), "phone").await.unwrap();
    fleet
        .wait_located("eu", &ivy, us1.id(), Duration::from_secs(20))
        .await;
    let (old_version, old_sessions) = fleet.replicated("eu", &ivy).await["us"].clone();

    us1.router.disconnect(ivy.clone(), "phone").await.unwrap();
    us2.router.connect(ivy.clone(), "phone").await.unwrap();
    fleet
        .wait_located("eu", &ivy, us2.id(), Duration::from_secs(20))
        .await;
    let late = Snapshot {
        region: "us".into(),
        user: ivy.clone(),
        version: old_version,
        at_micros: switchyard::envelope::now_micros(),
        sessions: serde_json::from_str(&old_sessions).unwrap(),
    };
    fleet.produce_snapshot(&late).await;
    let produced = switchyard::envelope::now_micros() as u64;

    // A snapshot taken after the late one was on the log lands after it
    // in the same partition: once eu has applied one, it has read both.
    let start = std::time::Instant::now();
    let presence = &fleet.regions["eu"].backends.presence();
    loop {
        let found = presence
            .locate_many_uncached(std::slice::from_ref(&ivy))
            .await
            .unwrap();
        let gateways: Vec<_> = found[0].iter().map(|s| s.gateway.clone()).collect();
        assert_eq!(&gateways, &[us2.id().clone()], "eu's view of ivy");
        if fleet.replicated("eu", &ivy).await["us"].0 > produced {
            break;
        }
        assert!(
            start.elapsed() < RESYNC * 2 + Duration::from_secs(5),
            "no re-sync of ivy reached eu"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Group messages from `from` to `group`: each must be confirmed at
/// exactly `gateways`; returns their ids.
async fn send_to_group(
    from: &region_fleet::Gateway,
    group: &switchyard::GroupId,
    n: usize,
    gateways: &[&switchyard::GatewayId],
) -> HashSet<switchyard::MessageId> {
    let mut expected: Vec<String> = gateways.iter().map(|g| g.to_string()).collect();
    expected.sort();
    let mut ids = HashSet::new();
    for i in 0..n {
        let envelope = Envelope::new(
            "sender",
            from.id().clone(),
            Destination::Group(group.clone()),
            format!("to the group {i}"),
        )
        .with_priority(Priority::High);
        let report = from.router.send(envelope).await.unwrap();
        let switchyard::Outcome::Routed { targets, .. } = report.outcome else {
            panic!("blocked")
        };
        let mut got: Vec<_> = targets.iter().map(|t| t.gateway.to_string()).collect();
        got.sort();
        assert_eq!(got, expected);
        assert!(targets.iter().all(|t| t.confirmed), "{targets:?}");
        ids.insert(report.id);
    }
    ids
}

/// A member who joins a group in `eu` only is a member in `us` too: a
/// group message sent from `us` reaches their gateway in `eu`, none lost.
/// Their leave, written in `us`, replicates back: newer, it wins in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_in_one_region_lets_the_other_reach_the_member() {
    let fleet = Fleet::start(&[RegionSpec::direct("eu"), RegionSpec::direct("us")]).await;
    let mut eu1 = fleet.gateway("eu", "eu1").await;
    let mut us1 = fleet.gateway("us", "us1").await;
    let (kim, leo) = (fleet.user("kim"), fleet.user("leo"));
    let team = fleet.group("team");
    eu1.router.connect(kim.clone(), "phone").await.unwrap();
    us1.router.connect(leo.clone(), "phone").await.unwrap();
    eu1.router.join(team.clone(), kim.clone()).await.unwrap();
    us1.router.join(team.clone(), leo.clone()).await.unwrap();
    fleet.wait_distribution("us", &team, eu1.id()).await;

    let ids = send_to_group(&us1, &team, 30, &[eu1.id(), us1.id()]).await;
    let got = drain(&mut eu1, &ids, Duration::from_secs(30)).await;
    assert_eq!(
        got.vias,
        HashSet::from([Via::Transport(TransportKind::KAFKA)])
    );
    drain(&mut us1, &ids, Duration::from_secs(30)).await;

    us1.router.leave(team.clone(), kim.clone()).await.unwrap();
    fleet.wait_members("eu", &team, &[&leo]).await;
    fleet.wait_members("us", &team, &[&leo]).await;
    let ids = send_to_group(&us1, &team, 10, &[us1.id()]).await;
    drain(&mut us1, &ids, Duration::from_secs(30)).await;
    let at_eu = drain_quiet(&mut eu1, Duration::from_millis(500)).await;
    assert!(
        at_eu.ids.is_empty(),
        "eu1 got {:?} after kim left",
        at_eu.ids
    );
}

/// `eu`'s join of a member, held up and arriving after the leave written
/// in `us` since, does not bring them back in `us`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_join_loses_to_a_newer_leave() {
    let fleet = Fleet::start(&[RegionSpec::direct("eu"), RegionSpec::direct("us")]).await;
    let eu1 = fleet.gateway("eu", "eu1").await;
    let us1 = fleet.gateway("us", "us1").await;
    let (mia, ned) = (fleet.user("mia"), fleet.user("ned"));
    let crew = fleet.group("crew");
    us1.router.join(crew.clone(), ned.clone()).await.unwrap();
    eu1.router.join(crew.clone(), mia.clone()).await.unwrap();
    fleet.wait_members("us", &crew, &[&mia, &ned]).await;
    let versions = format!("sy:group:{{{crew}}}:versions");
    let joined = fleet.redis_hash("us", &versions).await[mia.as_str()].clone();
    let (join_version, _) = joined.split_once('|').unwrap();

    us1.router.leave(crew.clone(), mia.clone()).await.unwrap();
    fleet.wait_members("eu", &crew, &[&ned]).await;
    let left = fleet.redis_hash("us", &versions).await[mia.as_str()].clone();
    let (leave_version, _) = left.split_once('|').unwrap();
    let leave_version: u64 = leave_version.parse().unwrap();
    let write = |member, version| Membership {
        region: "eu".into(),
        group: crew.clone(),
        user: mia.clone(),
        member,
        version,
    };
    fleet
        .produce_membership(&write(true, join_version.parse().unwrap()))
        .await;
    // A marker after it under the same key (same partition): once `us`
    // has it, it has read the late join too.
    let marker = write(false, leave_version + 1);
    fleet.produce_membership(&marker).await;
    let groups = fleet.regions["us"].backends.directory().groups().clone();
    let start = std::time::Instant::now();
    loop {
        let members = groups.members(&crew.clone()).await.unwrap();
        assert_eq!(members, std::slice::from_ref(&ned), "us's members of crew");
        let entry = fleet.redis_hash("us", &versions).await[mia.as_str()].clone();
        if entry == format!("{}|0|eu", marker.version) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "us never read the marker: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
