//! What only the Redis stores have: the shipped Redis and Sentinel
//! configs, connection errors, passwords and TLS. The stores' behaviour is
//! in the conformance suite (tests/it/stores/mod.rs), run on Redis standalone and
//! cluster. The config and error checks need no server; the rest
//! (`--features it-redis`) a Redis, its sentinels or a private
//! `redis-server`.

use testkit::redis_nodes;

use redis_nodes::{redis_config, settings, Deployment};
use switchyard::cause::Report;
#[cfg(feature = "it-redis")]
use {
    redis_nodes::{eventually, node, router},
    std::time::Duration,
};

#[test]
fn the_shipped_redis_config_loads_and_bad_keys_are_named() {
    let settings =
        switchyard::Settings::from_toml(include_str!("../../config/redis.toml")).unwrap();
    assert!(matches!(
        settings.store,
        switchyard::config::StoreConfig::Redis(_)
    ));
    assert_eq!(settings.routing.same_region, "redis");
    let err = switchyard::Settings::from_toml("[store]\nkind = \"redis\"\nurl = \"http://x\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("store.url") && err.contains("http://x"),
        "{err}"
    );
    let err = switchyard::Settings::from_toml("[store]\nkind = \"redis\"\nulr = \"redis://x\"\n")
        .unwrap_err();
    // The key is in the cause: the error says the config did not load.
    let err = Report(&err).to_string();
    assert!(err.contains("ulr"), "{err}");
}

/// `config/sentinel.toml` against `scripts/services/redis-sentinel.sh`:
/// stores and Pub/Sub find the master through the sentinels.
#[cfg(feature = "it-redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_sentinel_config_routes_through_the_sentinels_master() {
    let mut settings =
        switchyard::Settings::from_toml(include_str!("../../config/sentinel.toml")).unwrap();
    let prefix = format!("sy-test-{}", ulid::Ulid::new());
    let switchyard::config::StoreConfig::Redis(store) = &mut settings.store else {
        panic!("config/sentinel.toml has a Redis store");
    };
    store.key_prefix = prefix.clone();
    let transport = settings
        .transports
        .redis
        .as_mut()
        .expect("a Redis transport");
    transport.connection.key_prefix = prefix;
    let (a, _) = router(&settings, "gw-a").await;
    let (b, mut inbox) = router(&settings, "gw-b").await;
    b.connect("bob", "phone").await.unwrap();
    let envelope = redis_nodes::to_bob(0, switchyard::Priority::High);
    let report = a.send(envelope.clone()).await.unwrap();
    assert!(
        matches!(&report.outcome, switchyard::Outcome::Routed { targets, stored_offline: None } if targets.iter().all(|t| t.confirmed)),
        "{report:?}"
    );
    let delivery = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .expect("a delivery within 5 s")
        .expect("the inbox is open");
    assert_eq!(delivery.envelope.id, envelope.id);
}

#[test]
fn sentinel_settings_are_validated_by_key() {
    let err = switchyard::Settings::from_toml(
        "[store]\nkind = \"redis\"\ncluster = true\nresponse_timeout = \"1s\"\n\
         [store.sentinel]\nnodes = [\"http://x\"]\nwait_timeout = \"1s\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("store.sentinel.nodes") && err.contains("http://x"),
        "{err}"
    );
    assert!(
        err.contains("store.sentinel: cannot be combined with cluster"),
        "{err}"
    );
}

#[tokio::test]
async fn a_redis_that_is_down_at_start_up_is_named_in_the_error() {
    let mut redis = redis_config(Deployment::Standalone);
    redis.url = "redis://127.0.0.1:1".into();
    let err = switchyard::Backends::from_settings(&settings(&redis))
        .await
        .err()
        .expect("no Redis on port 1")
        .to_string();
    println!("{err}");
    assert!(err.contains("redis://127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn a_missing_credential_variable_is_named() {
    let mut redis = redis_config(Deployment::Standalone);
    redis.password_env = Some("SWITCHYARD_TEST_UNSET_PASSWORD".into());
    let err = switchyard::Backends::from_settings(&settings(&redis))
        .await
        .err()
        .expect("the variable is not set");
    let err = Report(&err).to_string();
    assert!(
        err.contains("SWITCHYARD_TEST_UNSET_PASSWORD is not set"),
        "{err}"
    );
}

/// A private password-protected Redis on a free port, killed on drop.
#[cfg(feature = "it-redis")]
struct PrivateRedis {
    port: u16,
    server: std::process::Child,
}

#[cfg(feature = "it-redis")]
impl PrivateRedis {
    fn start(password: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let server = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services/redis.sh installs it)");
        Self { port, server }
    }
}

#[cfg(feature = "it-redis")]
impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[cfg(feature = "it-redis")]
#[tokio::test]
async fn the_password_comes_from_the_named_environment_variable() {
    let private = PrivateRedis::start("s3cret");
    let mut redis = redis_config(Deployment::Standalone);
    redis.url = format!("redis://127.0.0.1:{}", private.port);
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", private.port))
                .await
                .is_ok()
        })
        .await
    );
    let err = switchyard::Backends::from_settings(&settings(&redis))
        .await
        .err()
        .expect("no password given")
        .to_string();
    assert!(err.contains(&redis.url), "{err}");

    // A variable only this test reads.
    std::env::set_var("SWITCHYARD_TEST_PRIVATE_REDIS_PASSWORD", "s3cret");
    redis.password_env = Some("SWITCHYARD_TEST_PRIVATE_REDIS_PASSWORD".into());
    let backends = node(&settings(&redis)).await;
    backends
        .blocks()
        .block(&"bob".into(), &"mallory".into())
        .await
        .unwrap();
    assert!(backends
        .blocks()
        .is_blocked(&"bob".into(), &"mallory".into())
        .await
        .unwrap());
}

/// No TLS Redis here: a `rediss://` URL against the plain-text server must
/// fail the TLS handshake with a clear error (not panic for want of a
/// crypto provider, not fall back to plain text).
#[cfg(feature = "it-redis")]
#[tokio::test]
async fn a_rediss_url_speaks_tls() {
    let mut redis = redis_config(Deployment::Standalone);
    redis.url = redis.url.replacen("redis://", "rediss://", 1);
    redis.connect_timeout = Duration::from_secs(2);
    let err = switchyard::Backends::from_settings(&settings(&redis))
        .await
        .err()
        .expect("a plain-text server cannot complete a TLS handshake")
        .to_string();
    println!("{err}");
    assert!(err.contains(&redis.url), "{err}");
}
