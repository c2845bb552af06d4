//! Shared by the broker tests: settings pointing at the servers that
//! `scripts/services/*.sh start` runs, and private NATS and Redis servers a
//! test starts, kills and restarts itself (on a free loopback port).

#![allow(dead_code)] // each test crate uses a different part of this module

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use switchyard::transport::kafka::{KafkaConfig, KafkaTransport};
use switchyard::transport::nats::{NatsConfig, NatsTransport, Storage};
use switchyard::transport::Transport;

/// The Kafka-protocol broker of `scripts/services/kafka.sh`.
pub const KAFKA: &str = "127.0.0.1:9092";
/// The NATS server of `scripts/services/nats.sh`.
pub const NATS: &str = "nats://127.0.0.1:4222";

/// Kafka settings tuned for tests: short timeouts, low fetch wait.
pub fn kafka_config(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.into(),
        client_id: "switchyard-test".into(),
        fetch_wait_max: Duration::from_millis(5),
        commit_interval: Duration::from_millis(100),
        delivery_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        ..KafkaConfig::default()
    }
}

/// NATS settings for tests: a test stream in memory, short ack wait so
/// redelivery cases finish quickly.
pub fn nats_config(url: &str) -> NatsConfig {
    NatsConfig {
        url: url.into(),
        stream: "SWITCHYARD_TEST".into(),
        subject_prefix: "sytest.gw".into(),
        storage: Storage::Memory,
        max_age: Duration::from_secs(600),
        ack_wait: Duration::from_secs(2),
        ..NatsConfig::default()
    }
}

/// Kafka settings for librdkafka's mock cluster, which does not implement
/// CreateTopics: topics are auto-created when first asked for instead.
pub fn mock_kafka_config(brokers: &str) -> KafkaConfig {
    let mut config = kafka_config(brokers);
    config.topics.create = false;
    config
        .properties
        .insert("allow.auto.create.topics".into(), "true".into());
    config
}

/// Connects to the shared Kafka broker, or panics saying how to start it.
pub async fn kafka() -> Arc<dyn Transport> {
    match KafkaTransport::connect(&kafka_config(KAFKA)).await {
        Ok(t) => Arc::new(t),
        Err(e) => panic!("{e}\n(start the broker with `scripts/services/kafka.sh start`)"),
    }
}

/// Connects to the shared NATS server, or panics saying how to start it.
pub async fn nats() -> Arc<dyn Transport> {
    match NatsTransport::connect(&nats_config(NATS)).await {
        Ok(t) => Arc::new(t),
        Err(e) => panic!("{e}\n(start the server with `scripts/services/nats.sh start`)"),
    }
}

/// A free loopback port (racy in theory; fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until something accepts connections on `port`.
pub async fn wait_listening(port: u16, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The servers a test can own.
#[derive(Debug, Clone, Copy)]
enum Server {
    Nats,
    Redis,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Nats => "nats-server",
            Server::Redis => "redis-server",
        }
    }

    /// The command line, keeping its data in `dir` so a restart finds it.
    fn command(self, port: u16, dir: &std::path::Path) -> Result<Command, String> {
        let binary = ["/usr/sbin", "/usr/bin", "/usr/local/bin"]
            .into_iter()
            .map(|d| PathBuf::from(d).join(self.name()))
            .find(|p| p.exists())
            .ok_or(format!(
                "no {} binary installed (scripts/services/*.sh start installs it)",
                self.name()
            ))?;
        let mut command = Command::new(binary);
        let port = port.to_string();
        match self {
            Server::Nats => command
                .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                .arg(dir),
            // Every write is in the append-only file before it is answered,
            // as a Redis holding presence and offline messages should run:
            // a kill loses nothing that was acknowledged.
            Server::Redis => command
                .args(["--bind", "127.0.0.1", "--port", &port, "--save", ""])
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
        };
        Ok(command)
    }
}

/// A `nats-server -js` or `redis-server` owned by one test, with its data
/// in a temp dir (so streams, consumers and keys survive its restart);
/// killed on drop.
pub struct PrivateBroker {
    /// The port it listens on, kept across restarts.
    pub port: u16,
    server: Server,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateBroker {
    /// Starts a NATS server with JetStream, or `None` (with the reason
    /// printed) if it cannot run.
    pub async fn nats() -> Option<Self> {
        match Self::start(Server::Nats).await {
            Ok(broker) => Some(broker),
            Err(reason) => {
                eprintln!("SKIP: cannot start a private nats-server: {reason}");
                None
            }
        }
    }

    /// Starts a Redis server, or panics with the reason.
    pub async fn redis() -> Self {
        Self::start(Server::Redis)
            .await
            .unwrap_or_else(|reason| panic!("cannot start a private redis-server: {reason}"))
    }

    async fn start(server: Server) -> Result<Self, String> {
        let mut broker = Self {
            port: free_port(),
            server,
            dir: tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?,
            child: None,
        };
        broker.run().await?;
        Ok(broker)
    }

    /// `nats://127.0.0.1:{port}` or `redis://127.0.0.1:{port}`.
    pub fn address(&self) -> String {
        let scheme = match self.server {
            Server::Nats => "nats",
            Server::Redis => "redis",
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process on the same port and waits until it listens.
    pub async fn run(&mut self) -> Result<(), String> {
        let child = self
            .server
            .command(self.port, self.dir.path())?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.server.name()))?;
        self.child = Some(child);
        if wait_listening(self.port, Duration::from_secs(20)).await {
            Ok(())
        } else {
            Err(format!("not listening on {} after 20s", self.port))
        }
    }

    /// Kills the process (as a crash would) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
