//! What only the etcd registry has: its watch surviving an etcd restart.
//! (Its registry behaviour is in the store conformance suite,
//! tests/it/stores/mod.rs `etcd::*`.) Starts a private `etcd` on free ports
//! (`scripts/services/etcd.sh install` puts it on the PATH), killed on drop,
//! and keeps presence on the Redis at 127.0.0.1:6379.

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(all(feature = "it-etcd", feature = "it-redis"))]
#![cfg(feature = "etcd")]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis_nodes::eventually;
use switchyard::presence::{PresenceStore, Session};
use switchyard::registry::{EtcdConfig, RegistryConfig};
use switchyard::{GatewayInfo, Settings};
use testkit::redis_nodes;

/// One etcd member on two free loopback ports, with its data in a
/// temporary directory, so a restart keeps its leases and history.
struct PrivateEtcd {
    client: u16,
    peer: u16,
    data: tempfile::TempDir,
    server: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl PrivateEtcd {
    async fn start() -> Self {
        let mut etcd = Self {
            client: free_port(),
            peer: free_port(),
            data: tempfile::tempdir().expect("a data directory"),
            server: None,
        };
        etcd.run().await;
        etcd
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    async fn run(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let server = Command::new("etcd")
            .args(["--name", "private", "--data-dir"])
            .arg(self.data.path())
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("private={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (scripts/services/etcd.sh install installs it)");
        self.server = Some(server);
        let client = self.client;
        assert!(
            eventually(Duration::from_secs(10), || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", client))
                    .await
                    .is_ok()
            })
            .await,
            "the private etcd did not listen on {}",
            self.url()
        );
    }

    fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn session(user: &'static str, gateway: &'static str) -> Session {
    Session {
        user: user.into(),
        device: "phone".into(),
        gateway: gateway.into(),
        region: "eu".into(),
        since_micros: 1,
    }
}

/// etcd is SIGKILLed and restarted while two nodes follow it: their
/// watches come back on their own, a gateway registered after the
/// restart reaches the other node, and one that stopped heart-beating
/// still leaves the ring and loses its sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_survives_an_etcd_restart() {
    let mut etcd = PrivateEtcd::start().await;
    // Presence on the shared Redis: whichever node claims gw-a's end
    // cleans up where both look.
    let redis = redis_nodes::redis_config(redis_nodes::Deployment::Standalone);
    let settings = Settings {
        registry: RegistryConfig::Etcd(EtcdConfig {
            endpoints: vec![etcd.url()],
            lease_ttl: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            ..EtcdConfig::default()
        }),
        ..redis_nodes::settings(&redis)
    };
    let a = redis_nodes::node(&settings).await;
    let b = redis_nodes::node(&settings).await;
    let (gw_a, gw_b) = (
        GatewayInfo::new("gw-a", "eu"),
        GatewayInfo::new("gw-b", "eu"),
    );
    a.registry().register(&gw_a).await.unwrap();
    b.directory().online(session("u1", "gw-a")).await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            b.registry().get(&gw_a.id).await.unwrap().is_some()
        })
        .await,
        "node b does not see gw-a"
    );

    etcd.kill();
    assert!(
        a.registry().register(&gw_a).await.is_err(),
        "a heartbeat succeeded with etcd down"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.run().await;

    // Written after the restart: only a watch that came back sees it.
    assert!(
        eventually(Duration::from_secs(15), || async {
            a.registry().register(&gw_b).await.is_ok()
        })
        .await,
        "registering failed after etcd came back"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            b.registry().get(&gw_b.id).await.unwrap().is_some()
        })
        .await,
        "node b's watch did not come back after the restart"
    );
    // gw-b beats on; gw-a beat last before the restart (etcd renews
    // leases on restart), so it goes one lease TTL later, on node b too.
    let registry = a.registry().clone();
    let beats = tokio::spawn(async move {
        loop {
            let _ = registry.register(&gw_b).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    assert!(
        eventually(Duration::from_secs(10), || async {
            let ring = b.registry().ring(16).await.unwrap();
            ring.gateways().map(|g| g.as_str()).collect::<Vec<_>>() == ["gw-b"]
        })
        .await,
        "gw-a is still on node b's ring"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.presence().locate(&"u1".into()).await.unwrap().is_empty()
        })
        .await,
        "gw-a's session on node b was not removed"
    );
    beats.abort();
}
