//! Presence and groups as gateways use them, over gRPC, on two sidecars
//! sharing real Redis (standalone and cluster): who is online, watching
//! friends come and go, and a group's members as its gateways fan out.

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(feature = "it-redis")]

use std::time::Duration;

use redis_nodes::Deployment;
use sidecars::*;
use switchyard::proto::gateway_client::GatewayClient;
use switchyard::proto::{self, PresenceChange};
use testkit::redis_nodes;
use testkit::sidecars;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

testkit::on_both!(
    a_friend_coming_and_going_reaches_the_gateway_that_watches_and_only_it,
    presence_of_five_hundred_users_is_one_call,
    group_members_hosted_here_are_what_a_gateway_fans_out_to,
);

async fn two_sidecars(
    deployment: Deployment,
) -> (
    Vec<switchyard::sidecar::Sidecar>,
    [GatewayClient<Channel>; 2],
) {
    let redis = redis_nodes::redis_config(deployment);
    let mut settings = redis_nodes::settings(&redis);
    settings.sidecar.listen = "127.0.0.1:0".parse().unwrap();
    settings.telemetry.listen = "127.0.0.1:0".parse().unwrap();
    let (_, sidecars) = fleet(&settings, 2).await;
    let a = gateway(sidecars[0].grpc_addr()).await;
    let b = gateway(sidecars[1].grpc_addr()).await;
    (sidecars, [a, b])
}

async fn device(
    client: &mut GatewayClient<Channel>,
    gateway: &str,
    user: &str,
    device: &str,
    on: bool,
) {
    if on {
        client
            .online(proto::OnlineRequest {
                gateway_id: gateway.into(),
                user: user.into(),
                device: device.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    } else {
        client
            .offline(proto::OfflineRequest {
                gateway_id: gateway.into(),
                user: user.into(),
                device: device.into(),
            })
            .await
            .unwrap();
    }
}

struct Watching {
    more: mpsc::Sender<proto::WatchMessage>,
    events: Streaming<proto::PresenceEvent>,
}

async fn watch(client: &mut GatewayClient<Channel>, gateway: &str, users: &[&str]) -> Watching {
    let (more, rx) = mpsc::channel(8);
    more.send(proto::WatchMessage {
        gateway_id: gateway.into(),
        add_users: users.iter().map(|u| u.to_string()).collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    let events = client
        .watch(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    Watching { more, events }
}

impl Watching {
    async fn next(&mut self) -> (String, PresenceChange, String, usize) {
        let e = tokio::time::timeout(Duration::from_secs(5), self.events.message())
            .await
            .expect("an event within 5 s")
            .expect("stream ok")
            .expect("stream open");
        let change = e.change();
        (e.user, change, e.device, e.sessions.len())
    }

    /// The snapshot of `n` users, sorted by user.
    async fn snapshot(&mut self, n: usize) -> Vec<(String, usize)> {
        let mut seen = Vec::new();
        for _ in 0..n {
            let (user, change, _, sessions) = self.next().await;
            assert_eq!(change, PresenceChange::Snapshot, "{user}");
            seen.push((user, sessions));
        }
        seen.sort();
        seen
    }
}

async fn a_friend_coming_and_going_reaches_the_gateway_that_watches_and_only_it(
    deployment: Deployment,
) {
    let (_sidecars, [mut a, mut b]) = two_sidecars(deployment).await;
    let _a = attach(&mut a, "gw-a", "eu").await;
    let _b = attach(&mut b, "gw-b", "us").await;
    device(&mut b, "gw-b", "carol", "phone", true).await;

    let mut a_watch = watch(&mut a, "gw-a", &["bob", "carol"]).await;
    assert_eq!(
        a_watch.snapshot(2).await,
        [("bob".into(), 0), ("carol".into(), 1)]
    );
    let mut b_watch = watch(&mut b, "gw-b", &["dave"]).await;
    assert_eq!(b_watch.snapshot(1).await, [("dave".into(), 0)]);

    // bob comes online on the other sidecar, then on a second device.
    device(&mut b, "gw-b", "bob", "phone", true).await;
    assert_eq!(
        a_watch.next().await,
        ("bob".into(), PresenceChange::Online, String::new(), 1)
    );
    device(&mut b, "gw-b", "bob", "laptop", true).await;
    assert_eq!(
        a_watch.next().await,
        (
            "bob".into(),
            PresenceChange::DeviceAdded,
            "laptop".into(),
            2
        )
    );
    // One device going offline keeps him online.
    device(&mut b, "gw-b", "bob", "phone", false).await;
    assert_eq!(
        a_watch.next().await,
        (
            "bob".into(),
            PresenceChange::DeviceRemoved,
            "phone".into(),
            1
        )
    );
    device(&mut b, "gw-b", "bob", "laptop", false).await;
    assert_eq!(
        a_watch.next().await,
        ("bob".into(), PresenceChange::Offline, String::new(), 0)
    );

    // gw-b watches only dave: its first event is dave's, none of bob's.
    device(&mut a, "gw-a", "dave", "tablet", true).await;
    assert_eq!(
        b_watch.next().await,
        ("dave".into(), PresenceChange::Online, String::new(), 1)
    );

    // Adding a user later snapshots them; a new Watch starts from snapshots.
    a_watch
        .more
        .send(proto::WatchMessage {
            add_users: vec!["dave".into()],
            remove_users: vec!["carol".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        a_watch.next().await,
        ("dave".into(), PresenceChange::Snapshot, String::new(), 1)
    );
    drop(a_watch);
    let mut again = watch(&mut a, "gw-a", &["bob", "carol", "dave"]).await;
    assert_eq!(
        again.snapshot(3).await,
        [("bob".into(), 0), ("carol".into(), 1), ("dave".into(), 1)]
    );
}

async fn presence_of_five_hundred_users_is_one_call(deployment: Deployment) {
    let (_sidecars, [mut a, mut b]) = two_sidecars(deployment).await;
    let _a = attach(&mut a, "gw-a", "eu").await;
    let _b = attach(&mut b, "gw-b", "us").await;
    // Every third user online on gw-a, every fifth also on gw-b's laptop.
    let users: Vec<String> = (0..500).map(|i| format!("friend-{i}")).collect();
    for (i, user) in users.iter().enumerate() {
        if i % 3 == 0 {
            device(&mut a, "gw-a", user, "phone", true).await;
            if i % 5 == 0 {
                device(&mut b, "gw-b", user, "laptop", true).await;
            }
        }
    }
    let answer = b
        .presence(proto::PresenceRequest {
            gateway_id: "gw-b".into(),
            users: users.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(answer.len(), 500);
    for (i, (user, got)) in users.iter().zip(&answer).enumerate() {
        assert_eq!(&got.user, user);
        assert_eq!(got.online, i % 3 == 0, "{user}");
        let mut where_: Vec<(String, String, String)> = got
            .sessions
            .iter()
            .map(|s| (s.device.clone(), s.gateway.clone(), s.region.clone()))
            .collect();
        where_.sort();
        let expected: Vec<(String, String, String)> = match (i % 3 == 0, i % 5 == 0) {
            (false, _) => vec![],
            (true, false) => vec![("phone".into(), "gw-a".into(), "eu".into())],
            (true, true) => vec![
                ("laptop".into(), "gw-b".into(), "us".into()),
                ("phone".into(), "gw-a".into(), "eu".into()),
            ],
        };
        assert_eq!(where_, expected, "{user}");
    }
    let status = b
        .presence(proto::PresenceRequest {
            gateway_id: "gw-b".into(),
            users: (0..1001).map(|i| format!("u{i}")).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

async fn group_members_hosted_here_are_what_a_gateway_fans_out_to(deployment: Deployment) {
    let (sidecars, [mut a, mut b]) = two_sidecars(deployment).await;
    let _a = attach(&mut a, "gw-a", "eu").await;
    let mut b_stream = attach(&mut b, "gw-b", "eu").await;
    for (on_a, user) in [(true, "ann"), (false, "ben"), (false, "bea"), (true, "amy")] {
        let (client, gateway) = if on_a {
            (&mut a, "gw-a")
        } else {
            (&mut b, "gw-b")
        };
        device(client, gateway, user, "phone", true).await;
        client
            .join(proto::GroupRequest {
                gateway_id: gateway.into(),
                user: user.into(),
                group: "room".into(),
            })
            .await
            .unwrap();
    }
    let members = |hosted_only, after: &str, limit| proto::GroupMembersRequest {
        gateway_id: "gw-b".into(),
        group: "room".into(),
        hosted_only,
        limit,
        after: after.into(),
    };
    let all = b
        .group_members(members(false, "", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.members, ["amy", "ann", "bea", "ben"]);
    assert_eq!((all.total_members, all.online_members), (4, 4));
    assert_eq!(all.next_after, "");

    let page = b
        .group_members(members(false, "", 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (page.members.as_slice(), page.next_after.as_str()),
        (&["amy".to_string(), "ann".into(), "bea".into()][..], "bea")
    );
    let last = b
        .group_members(members(false, "bea", 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (last.members, last.next_after),
        (vec!["ben".to_string()], String::new())
    );

    // A group delivery reaches gw-b once; these are the members it hands it to.
    let mut to_room = message("ann", "x", "hello room");
    to_room.destination = Some(proto::envelope::Destination::Group("room".into()));
    let outcome = send(&mut a, "gw-a", to_room).await;
    assert!(routed(&outcome).targets.iter().all(|t| t.delivered));
    let delivery = next(&mut b_stream).await;
    assert_eq!(delivery.envelope.unwrap().payload.as_ref(), b"hello room");
    let hosted = b
        .group_members(members(true, "", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hosted.members, ["bea", "ben"]);

    // Online counts per gateway, as the Admin API shows them.
    let state = admin(sidecars[1].grpc_addr())
        .await
        .state(proto::StateRequest {})
        .await
        .unwrap()
        .into_inner();
    let counts: Vec<(String, u64)> = state
        .gateways
        .iter()
        .map(|g| (g.gateway_id.clone(), g.online_users))
        .collect();
    assert_eq!(counts, [("gw-b".to_string(), 2)]);

    let groups = b
        .user_groups(proto::UserGroupsRequest {
            gateway_id: "gw-b".into(),
            user: "ben".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(groups.groups, ["room"]);
}
