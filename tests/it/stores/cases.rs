//! The cases every store backend must pass. Each takes a [`Deployment`]
//! (router nodes over one shared backend) and asserts exact results, through
//! the store traits and, where the behaviour is the router's, through
//! routers.

use std::collections::BTreeMap;
#[cfg(any(feature = "it-redis", feature = "it-etcd"))]
use std::sync::Arc;
use std::time::Duration;

use switchyard::error::StoreError;
use switchyard::offline::OfflineConfig;
use switchyard::presence::{PresenceStore, Session};
use switchyard::registry::ring::{Ring, DEFAULT_VNODES};
use switchyard::registry::Registry;
use switchyard::{
    Backends, Destination, Envelope, GatewayId, GatewayInfo, Inbox, Outcome, Priority, Router,
    SendReport, Settings, UserId,
};

use testkit::wait::eventually;

/// Router nodes over one deployment of a backend.
#[async_trait::async_trait]
pub trait Deployment: Send + Sync {
    /// Settings that put the stores under test on this backend, under
    /// names no other test uses.
    fn settings(&self) -> Settings;
    /// How long a gateway that stopped heart-beating stays registered.
    #[cfg(any(feature = "it-redis", feature = "it-etcd"))]
    fn set_gateway_ttl(&self, settings: &mut Settings, ttl: Duration);
    /// One router node's backends; another call is another node sharing
    /// the same state (where the backend is shared at all).
    async fn node(&self, settings: &Settings) -> Backends;
}

/// A router for gateway `id` in region `eu` on a node of its own.
async fn router(d: &dyn Deployment, settings: &Settings, id: &str) -> (Router, Inbox) {
    Router::builder(GatewayInfo::new(id.parse::<GatewayId>().unwrap(), "eu"))
        .settings(settings.clone())
        .backends(d.node(settings).await)
        .build()
        .await
        .expect("a router")
}

fn session(user: &'static str, device: &'static str, gateway: &'static str) -> Session {
    Session {
        user: user.into(),
        device: device.into(),
        gateway: gateway.into(),
        region: "eu".into(),
        since_micros: 42,
    }
}

pub async fn presence_keeps_every_device_of_a_user(d: &dyn Deployment) {
    let backends = d.node(&d.settings()).await;
    let presence = &backends.presence();
    assert!(presence
        .online(session("u1", "phone", "gw-a"))
        .await
        .unwrap());
    assert!(!presence
        .online(session("u1", "laptop", "gw-a"))
        .await
        .unwrap());
    assert!(presence
        .online(session("u1", "tablet", "gw-b"))
        .await
        .unwrap());
    let mut found = presence.locate(&"u1".into()).await.unwrap();
    found.sort_by(|a, b| a.device.cmp(&b.device));
    assert_eq!(
        found,
        vec![
            session("u1", "laptop", "gw-a"),
            session("u1", "phone", "gw-a"),
            session("u1", "tablet", "gw-b")
        ]
    );
    let (_, last) = presence
        .offline(&"u1".into(), &"phone".into())
        .await
        .unwrap()
        .unwrap();
    assert!(!last, "the laptop is still on gw-a");
    let (_, last) = presence
        .offline(&"u1".into(), &"laptop".into())
        .await
        .unwrap()
        .unwrap();
    assert!(last);
    assert!(presence
        .offline(&"u1".into(), &"laptop".into())
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        presence.locate(&"u1".into()).await.unwrap(),
        vec![session("u1", "tablet", "gw-b")]
    );
}

pub async fn sessions_expire_without_heartbeat(d: &dyn Deployment) {
    let mut settings = d.settings();
    settings.presence.session_ttl = Duration::from_millis(1500);
    settings.presence.cache_capacity = 0;
    let backends = d.node(&settings).await;
    let presence = &backends.presence();
    presence.online(session("u1", "d", "gw-a")).await.unwrap();
    presence.online(session("u2", "d", "gw-b")).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        presence.refresh(&"gw-a".into()).await.unwrap();
    }
    assert_eq!(
        presence.locate(&"u1".into()).await.unwrap().len(),
        1,
        "refreshed"
    );
    assert!(
        presence.locate(&"u2".into()).await.unwrap().is_empty(),
        "expired"
    );
    assert_eq!(presence.hosted_users(&"gw-a".into()).await.unwrap(), 1);
}

pub async fn a_dead_gateway_takes_its_sessions_with_it(d: &dyn Deployment) {
    let backends = d.node(&d.settings()).await;
    let presence = &backends.presence();
    presence.online(session("u1", "d1", "gw-a")).await.unwrap();
    presence.online(session("u1", "d2", "gw-b")).await.unwrap();
    presence.online(session("u2", "d1", "gw-a")).await.unwrap();
    assert_eq!(presence.hosted_users(&"gw-a".into()).await.unwrap(), 2);
    let mut removed = presence.remove_gateway(&"gw-a".into()).await.unwrap();
    removed.sort_by(|a, b| a.user.cmp(&b.user));
    assert_eq!(
        removed,
        vec![session("u1", "d1", "gw-a"), session("u2", "d1", "gw-a")]
    );
    assert_eq!(
        presence.locate(&"u1".into()).await.unwrap(),
        vec![session("u1", "d2", "gw-b")]
    );
    assert!(presence.locate(&"u2".into()).await.unwrap().is_empty());
    assert_eq!(presence.hosted_users(&"gw-a".into()).await.unwrap(), 0);
}

pub async fn a_presence_change_invalidates_the_cache_of_every_node(d: &dyn Deployment) {
    let mut settings = d.settings();
    // Without events, node B would serve its cached answer for a minute.
    settings.presence.cache_ttl = Duration::from_secs(60);
    let (a, b) = (d.node(&settings).await, d.node(&settings).await);
    let alice = UserId::from("alice");
    assert!(
        b.presence().locate(&alice).await.unwrap().is_empty(),
        "cached: offline"
    );
    a.directory()
        .online(session("alice", "phone", "gw-a"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.presence().locate(&alice).await.unwrap().len() == 1
        })
        .await,
        "node B still serves the stale cached lookup"
    );
    a.directory()
        .offline(&alice, &"phone".into())
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.presence().locate(&alice).await.unwrap().is_empty()
        })
        .await
    );
}

pub async fn membership_and_per_gateway_counts(d: &dyn Deployment) {
    let backends = d.node(&d.settings()).await;
    let groups = backends.directory().groups();
    let (room, alice, bob) = ("room".into(), UserId::from("alice"), UserId::from("bob"));
    assert!(matches!(
        groups.members(&room).await,
        Err(StoreError::UnknownGroup(g)) if g == room
    ));
    assert!(groups.join(&room, &alice).await.unwrap());
    assert!(
        !groups.join(&room, &alice).await.unwrap(),
        "already a member"
    );
    assert!(groups.join(&room, &bob).await.unwrap());
    let mut members = groups.members(&room).await.unwrap();
    members.sort();
    assert_eq!(members, [alice.clone(), bob.clone()]);
    assert_eq!(groups.groups_of(&alice).await.unwrap(), vec![room.clone()]);

    let (gw_a, gw_b) = (GatewayId::from("gw-a"), GatewayId::from("gw-b"));
    groups.adjust(&room, &gw_a, 2).await.unwrap();
    groups.adjust(&room, &gw_b, 1).await.unwrap();
    assert_eq!(
        groups.distribution(&room).await.unwrap(),
        vec![(gw_a.clone(), 2), (gw_b.clone(), 1)]
    );
    groups.adjust(&room, &gw_b, -1).await.unwrap();
    assert_eq!(
        groups.distribution(&room).await.unwrap(),
        vec![(gw_a, 2)],
        "a count that reaches zero removes the gateway"
    );

    assert!(groups.leave(&room, &alice).await.unwrap());
    assert!(!groups.leave(&room, &alice).await.unwrap(), "not a member");
    assert!(groups.groups_of(&alice).await.unwrap().is_empty());
    assert!(groups.leave(&room, &bob).await.unwrap());
    assert!(matches!(
        groups.distribution(&room).await,
        Err(StoreError::UnknownGroup(_))
    ));
}

pub async fn a_group_message_is_published_once_per_gateway(d: &dyn Deployment) {
    let settings = d.settings();
    let (sender, _) = router(d, &settings, "gw-s").await;
    let mut gateways = Vec::new();
    for g in 0..3 {
        let (router, inbox) = router(d, &settings, &format!("gw-{g}")).await;
        // 4 members per gateway, one of them on two devices there.
        for m in 0..4 {
            let user: UserId = format!("m{g}-{m}").parse().unwrap();
            router.connect(user.clone(), "phone").await.unwrap();
            sender.join("room", user.clone()).await.unwrap();
        }
        let first: UserId = format!("m{g}-0").parse().unwrap();
        router.connect(first, "laptop").await.unwrap();
        gateways.push((router, inbox));
    }
    let distribution = sender
        .backends()
        .directory()
        .groups()
        .distribution(&"room".into())
        .await
        .unwrap();
    assert_eq!(
        distribution,
        vec![("gw-0".into(), 4), ("gw-1".into(), 4), ("gw-2".into(), 4)]
    );
    let report = sender
        .send(
            Envelope::new(
                "m0-0",
                "gw-s",
                Destination::Group("room".into()),
                "hello room",
            )
            .with_priority(Priority::High),
        )
        .await
        .unwrap();
    let Outcome::Routed {
        targets,
        stored_offline,
    } = report.outcome
    else {
        panic!("not routed")
    };
    assert_eq!(stored_offline, None);
    assert_eq!(
        targets.len(),
        3,
        "one publish per gateway, not per member: {targets:?}"
    );
    assert!(targets.iter().all(|t| t.result.is_ok()), "{targets:?}");
    for (_, inbox) in &mut gateways {
        let delivery = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .unwrap()
            .unwrap();
        inbox.ack(delivery.seq);
        assert_eq!(delivery.envelope.payload, "hello room");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), inbox.recv())
                .await
                .is_err(),
            "a gateway got the group message twice"
        );
    }
}

pub async fn a_blocked_sender_reaches_nobody(d: &dyn Deployment) {
    let settings = d.settings();
    let (router, _) = router(d, &settings, "gw-a").await;
    router.block("bob", "mallory").await.unwrap();
    assert_eq!(
        router
            .backends()
            .blocks()
            .blocked_by(&"bob".into())
            .await
            .unwrap(),
        [UserId::from("mallory")]
    );
    let to_bob =
        |from: &'static str| Envelope::new(from, "gw-a", Destination::User("bob".into()), "hi");
    let blocked = |report: SendReport| matches!(report.outcome, Outcome::Blocked);
    assert!(blocked(router.send(to_bob("mallory")).await.unwrap()));
    assert!(!blocked(router.send(to_bob("alice")).await.unwrap()));
    router.unblock("bob", "mallory").await.unwrap();
    assert!(!blocked(router.send(to_bob("mallory")).await.unwrap()));
    assert_eq!(
        router
            .backends()
            .offline()
            .depth(&"bob".into())
            .await
            .unwrap(),
        2
    );
}

pub async fn a_block_reaches_the_cache_of_every_node(d: &dyn Deployment) {
    let mut settings = d.settings();
    // Without events, node B would serve its cached list for a minute.
    settings.blocks.cache_ttl = Duration::from_secs(60);
    let (a, b) = (d.node(&settings).await, d.node(&settings).await);
    let (bob, mallory) = (UserId::from("bob"), UserId::from("mallory"));
    assert!(
        !b.blocks().is_blocked(&bob, &mallory).await.unwrap(),
        "cached: bob blocks nobody"
    );
    a.blocks().block(&bob, &mallory).await.unwrap();
    assert!(
        a.blocks().is_blocked(&bob, &mallory).await.unwrap(),
        "the node that blocked sees it at once"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.blocks().is_blocked(&bob, &mallory).await.unwrap()
        })
        .await,
        "node B still lets mallory through from its cache"
    );
    a.blocks().unblock(&bob, &mallory).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            !b.blocks().is_blocked(&bob, &mallory).await.unwrap()
        })
        .await
    );
}

pub async fn offline_messages_replay_in_order_and_acks_remove_them(d: &dyn Deployment) {
    let settings = d.settings();
    let backends = d.node(&settings).await;
    let bob = UserId::from("bob");
    let sent: Vec<Envelope> = (0..300)
        .map(|i| {
            Envelope::new(
                "alice",
                "gw-a",
                Destination::User(bob.clone()),
                format!("m{i}"),
            )
        })
        .collect();
    for env in &sent {
        backends.offline().append(&bob, env).await.unwrap();
    }
    assert_eq!(backends.offline().depth(&bob).await.unwrap(), 300);
    let first = backends.offline().read(&bob, 200).await.unwrap();
    assert_eq!(first, sent[..200].to_vec());
    let ids: Vec<_> = first.iter().map(|e| e.id).collect();
    assert_eq!(backends.offline().ack(&bob, &ids).await.unwrap(), 200);
    assert_eq!(
        backends.offline().read(&bob, 1000).await.unwrap(),
        sent[200..].to_vec()
    );

    // And through the router: connecting replays the rest in order.
    let (router, mut inbox) = router(d, &settings, "gw-b").await;
    assert_eq!(router.connect("bob", "phone").await.unwrap(), 100);
    for expected in &sent[200..] {
        let delivery = inbox.recv().await.unwrap();
        assert_eq!(&delivery.envelope.payload, &expected.payload);
        inbox.ack(delivery.seq);
    }
    // Each replayed message leaves the store once its delivery is acked.
    assert!(
        eventually(Duration::from_secs(5), || async {
            backends.offline().depth(&bob).await.unwrap() == 0
        })
        .await,
        "acked offline messages are still stored"
    );
}

pub async fn a_message_that_keeps_failing_is_dead_lettered(d: &dyn Deployment) {
    let mut settings = d.settings();
    settings.offline = OfflineConfig {
        max_deliveries: 3,
        ..OfflineConfig::default()
    };
    let backends = d.node(&settings).await;
    let bob = UserId::from("bob");
    let (ok, poison) = (
        Envelope::new("alice", "gw-a", Destination::User(bob.clone()), "fine"),
        Envelope::new("alice", "gw-a", Destination::User(bob.clone()), "poison"),
    );
    backends.offline().append(&bob, &poison).await.unwrap();
    backends.offline().append(&bob, &ok).await.unwrap();
    for attempt in 1..=3 {
        let moved = backends
            .offline()
            .delivery_failed(&bob, poison.id, "client crashed")
            .await
            .unwrap();
        assert_eq!(moved, attempt == 3, "attempt {attempt}");
    }
    assert_eq!(backends.offline().depth(&bob).await.unwrap(), 1);
    assert_eq!(
        backends.offline().read(&bob, 10).await.unwrap(),
        vec![ok.clone()]
    );
    assert_eq!(
        backends.offline().dead_letters(&bob, 10).await.unwrap(),
        vec![(poison, "client crashed".to_owned())]
    );
}

pub async fn users_flagged_for_a_gateway_are_taken_once(d: &dyn Deployment) {
    let backends = d.node(&d.settings()).await;
    let (gw, other) = (GatewayId::from("gw-f"), GatewayId::from("gw-g"));
    for user in ["bob", "carol", "bob"] {
        backends.offline().flag(&gw, &user.into()).await.unwrap();
    }
    backends
        .offline()
        .flag(&other, &"dave".into())
        .await
        .unwrap();
    let mut taken = backends.offline().take_flagged(&gw).await.unwrap();
    taken.sort();
    assert_eq!(taken, [UserId::from("bob"), UserId::from("carol")]);
    assert!(backends
        .offline()
        .take_flagged(&gw)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        backends.offline().take_flagged(&other).await.unwrap(),
        [UserId::from("dave")]
    );
}

pub async fn a_registered_gateway_is_found_until_it_leaves(d: &dyn Deployment) {
    let backends = d.node(&d.settings()).await;
    let registry = &backends.registry();
    let mut a = GatewayInfo::new("gw-a", "eu");
    a.address = "10.0.0.1:7000".into();
    let b = GatewayInfo::new("gw-b", "us");
    assert_eq!(registry.get(&a.id).await.unwrap(), None);
    registry.register(&a).await.unwrap();
    registry.register(&b).await.unwrap();
    assert_eq!(registry.get(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(registry.list().await.unwrap(), [a.clone(), b.clone()]);

    // A restart elsewhere re-registers the same id at a new address.
    let mut moved = a.clone();
    moved.address = "10.0.0.2:7000".into();
    registry.register(&moved).await.unwrap();
    assert_eq!(registry.get(&a.id).await.unwrap(), Some(moved.clone()));
    assert_eq!(registry.list().await.unwrap(), [moved, b.clone()]);

    registry.deregister(&a.id).await.unwrap();
    assert_eq!(registry.get(&a.id).await.unwrap(), None);
    assert_eq!(registry.list().await.unwrap(), [b]);
}

/// A gateway registered through one node is found through every other
/// (no event: within the look-up cache's TTL), and so is its leaving.
pub async fn a_registration_reaches_every_node(d: &dyn Deployment) {
    let settings = d.settings();
    let (a, b) = (d.node(&settings).await, d.node(&settings).await);
    let gw = GatewayInfo::new("gw-a", "eu");
    assert_eq!(b.registry().get(&gw.id).await.unwrap(), None);
    a.registry().register(&gw).await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            b.registry().get(&gw.id).await.unwrap().as_ref() == Some(&gw)
                && ring_ids(&**b.registry()).await == ["gw-a"]
        })
        .await,
        "node B does not know gw-a"
    );
    a.registry().deregister(&gw.id).await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            b.registry().get(&gw.id).await.unwrap().is_none()
                && ring_ids(&**b.registry()).await.is_empty()
        })
        .await,
        "node B still knows gw-a after it left"
    );
}

/// 10 gateways, 100 000 users, 160 virtual nodes each: every gateway gets
/// within ±15% of the mean (measured: -7.9%..+6.5%); adding an 11th moves only users to it (about
/// 1/11 of them), and removing one moves only that gateway's users.
pub async fn the_ring_is_balanced_and_moves_only_the_changed_share(d: &dyn Deployment) {
    let backends = d.node(&d.settings()).await;
    for i in 0..10 {
        let gateway = GatewayInfo::new(GatewayId::try_from(format!("gw-{i:02}")).unwrap(), "eu");
        backends.registry().register(&gateway).await.unwrap();
    }
    let ring = backends.registry().ring(DEFAULT_VNODES).await.unwrap();
    let users: Vec<UserId> = (0..100_000)
        .map(|u| UserId::try_from(format!("user-{u}")).unwrap())
        .collect();
    let assign = |ring: &Ring| -> Vec<String> {
        users
            .iter()
            .map(|u| ring.assign(u).unwrap().id.to_string())
            .collect()
    };
    let before = assign(&ring);
    let mut shares: BTreeMap<&str, usize> = BTreeMap::new();
    for g in &before {
        *shares.entry(g).or_default() += 1;
    }
    let mean = users.len() / 10;
    let (min, max) = (
        shares.values().min().unwrap(),
        shares.values().max().unwrap(),
    );
    println!("shares over 10 gateways: min {min} max {max} mean {mean} ({shares:?})");
    assert!(
        *min as f64 >= mean as f64 * 0.85 && *max as f64 <= mean as f64 * 1.15,
        "unbalanced: {shares:?}"
    );

    let joined = GatewayInfo::new("gw-10", "eu");
    backends.registry().register(&joined).await.unwrap();
    let after_join = assign(&backends.registry().ring(DEFAULT_VNODES).await.unwrap());
    let moved: Vec<usize> = (0..users.len())
        .filter(|&i| before[i] != after_join[i])
        .collect();
    println!(
        "join: {} of {} users moved ({:.1}%, ideal {:.1}%)",
        moved.len(),
        users.len(),
        moved.len() as f64 * 100.0 / users.len() as f64,
        100.0 / 11.0
    );
    assert!(
        moved.iter().all(|&i| after_join[i] == "gw-10"),
        "a join moved users between old gateways"
    );
    assert!(moved.len() > users.len() / 11 * 3 / 4 && moved.len() < users.len() / 11 * 5 / 4);

    backends
        .registry()
        .deregister(&"gw-03".into())
        .await
        .unwrap();
    let after_leave = assign(&backends.registry().ring(DEFAULT_VNODES).await.unwrap());
    let moved = (0..users.len())
        .filter(|&i| after_join[i] != after_leave[i])
        .count();
    let owned = after_join.iter().filter(|g| *g == "gw-03").count();
    println!("leave: {moved} users moved, gw-03 owned {owned}");
    assert_eq!(
        moved, owned,
        "a leave moved users the leaving gateway did not own"
    );
}

/// The ids on the ring, in order.
async fn ring_ids(registry: &dyn Registry) -> Vec<String> {
    let ring = registry.ring(DEFAULT_VNODES).await.unwrap();
    ring.gateways().map(|g| g.to_string()).collect()
}

/// gw-a stops heart-beating: it leaves the ring once its TTL ran out (not
/// before, while gw-b beats on), its users are no longer located there and
/// the groups stop counting them; when it comes back it re-joins at once.
#[cfg(any(feature = "it-redis", feature = "it-etcd"))]
pub async fn an_expired_gateway_loses_its_sessions_and_its_ring_share(d: &dyn Deployment) {
    // 2 s: etcd grants no lease shorter (its minimum follows the election
    // timeout), and Redis keeps the same pace.
    let ttl = Duration::from_secs(2);
    let mut settings = d.settings();
    d.set_gateway_ttl(&mut settings, ttl);
    let backends = d.node(&settings).await;
    let (a, b) = (
        GatewayInfo::new("gw-a", "eu"),
        GatewayInfo::new("gw-b", "eu"),
    );
    backends.registry().register(&a).await.unwrap();
    backends.registry().register(&b).await.unwrap();
    let silent_since = tokio::time::Instant::now();
    let directory = &backends.directory();
    directory.online(session("u1", "d1", "gw-a")).await.unwrap();
    directory.online(session("u1", "d2", "gw-b")).await.unwrap();
    directory.join(&"g".into(), &"u1".into()).await.unwrap();
    assert_eq!(ring_ids(&**backends.registry()).await, ["gw-a", "gw-b"]);

    // gw-b keeps beating, gw-a stopped.
    let registry: Arc<dyn Registry> = backends.registry().clone();
    let beats = tokio::spawn(async move {
        loop {
            registry.register(&b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let left = eventually(ttl * 3, || async {
        ring_ids(&**backends.registry()).await == ["gw-b"]
    })
    .await;
    let after = silent_since.elapsed();
    assert!(
        left,
        "gw-a is still on the ring {ttl:?} x 3 after its last beat"
    );
    println!("gw-a left the ring {after:?} after its last beat (ttl {ttl:?})");
    assert!(
        after >= ttl / 2,
        "gw-a left after {after:?}, well within its TTL"
    );
    // The TTL, then the backend's expiry and the poll: within a second.
    assert!(
        after <= ttl + Duration::from_secs(1),
        "gw-a left only after {after:?}"
    );
    assert!(backends
        .registry()
        .get(&"gw-a".into())
        .await
        .unwrap()
        .is_none());
    assert!(
        eventually(Duration::from_secs(3), || async {
            backends.presence().locate(&"u1".into()).await.unwrap()
                == vec![session("u1", "d2", "gw-b")]
        })
        .await,
        "nobody removed gw-a's session"
    );
    assert_eq!(
        directory.groups().distribution(&"g".into()).await.unwrap(),
        vec![("gw-b".into(), 1)]
    );

    // A restarted gw-a registers again and is back on the ring at once.
    backends.registry().register(&a).await.unwrap();
    assert_eq!(ring_ids(&**backends.registry()).await, ["gw-a", "gw-b"]);
    assert_eq!(backends.registry().get(&a.id).await.unwrap(), Some(a));
    beats.abort();
}
