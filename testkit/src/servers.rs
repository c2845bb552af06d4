//! Shared by the broker tests: settings pointing at the servers that
//! `scripts/services/*.sh start` runs, private NATS and Redis servers a
//! test starts, kills and restarts itself (on a free loopback port), and
//! private three-node Kafka clusters for tests that kill brokers.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use switchyard::transport::kafka::{KafkaConfig, KafkaTransport};
use switchyard::transport::nats::{NatsConfig, NatsTransport, Storage};
use switchyard::transport::Transport;

/// The three-node Apache Kafka cluster of `scripts/services/kafka.sh`.
pub const KAFKA: &str = "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094";
/// The NATS server of `scripts/services/nats.sh`.
pub const NATS: &str = "nats://127.0.0.1:4222";
/// The three-node NATS JetStream cluster of `scripts/services/nats.sh`.
pub const NATS_CLUSTER: &str =
    "nats://127.0.0.1:22400,nats://127.0.0.1:22401,nats://127.0.0.1:22402";
/// The sentinels of `scripts/services/redis-sentinel.sh` (service
/// `switchyard`).
pub const SENTINELS: [&str; 3] = [
    "redis://127.0.0.1:22110",
    "redis://127.0.0.1:22111",
    "redis://127.0.0.1:22112",
];

/// Kafka settings tuned for tests: short timeouts, low fetch wait, topics
/// replicated on all three nodes.
pub fn kafka_config(brokers: &str) -> KafkaConfig {
    let mut config = KafkaConfig {
        brokers: brokers.into(),
        client_id: "switchyard-test".into(),
        fetch_wait_max: Duration::from_millis(5),
        commit_interval: Duration::from_millis(100),
        delivery_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        ..KafkaConfig::default()
    };
    config.topics.replication = 3;
    config
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
    /// Starts a NATS server with JetStream, or panics with the reason.
    pub async fn nats() -> Self {
        Self::start(Server::Nats)
            .await
            .unwrap_or_else(|reason| panic!("cannot start a private nats-server: {reason}"))
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

    /// Stops the process with SIGSTOP: it keeps its connections and
    /// answers nothing, as behind a network partition.
    pub fn freeze(&mut self) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args(["-STOP", &child.id().to_string()])
                .status()
                .expect("kill -STOP");
            assert!(status.success(), "kill -STOP {}", child.id());
        }
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&mut self) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status()
                .expect("kill -CONT");
            assert!(status.success(), "kill -CONT {}", child.id());
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

/// A three-node Apache Kafka cluster owned by one test, run by
/// `scripts/services/kafka.sh` with its data in a temp dir (so a restarted
/// node finds its log and committed offsets) and its own ports: node N
/// serves clients on `base + N - 1`. Every test passes its own `base`
/// (below 32768, out of the ephemeral range). Killed on drop.
pub struct PrivateKafka {
    script: ServiceScript,
}

impl PrivateKafka {
    /// Formats and starts the cluster and waits until all three brokers
    /// are in its metadata; panics with the script's output if not.
    pub async fn start(base: u16) -> Self {
        Self::start_with(ServiceScript::new("kafka.sh", &[], "KAFKA", base)).await
    }

    /// Like [`PrivateKafka::start`], with a second listener per node on
    /// `base + 200 + N - 1` advertised as `127.0.0.1:{wan + N - 1}`, where
    /// a proxy (the simulated WAN) forwards to it.
    pub async fn start_with_wan(base: u16, wan: u16) -> Self {
        let script = ServiceScript::new("kafka.sh", &[], "KAFKA", base)
            .with_env("KAFKA_WAN_BASE", wan.to_string());
        Self::start_with(script).await
    }

    /// Like [`PrivateKafka::start_with_wan`], run inside network namespace
    /// `netns` (every node, so the first listener is that namespace's
    /// loopback), the WAN listeners bound on `wan_host` (the namespace's
    /// veth address, where the proxy in the root namespace connects) and
    /// advertised as `{wan_advertised}:{wan + N - 1}` (the proxy, where the
    /// remote region's namespace reaches it).
    pub async fn start_in_netns(
        netns: &'static str,
        base: u16,
        wan: u16,
        wan_host: &str,
        wan_advertised: &str,
    ) -> Self {
        let mut script = ServiceScript::new("kafka.sh", &[], "KAFKA", base)
            .with_env("KAFKA_WAN_BASE", wan.to_string())
            .with_env("KAFKA_WAN_HOST", wan_host)
            .with_env("KAFKA_WAN_ADVERTISED_HOST", wan_advertised);
        script.netns = Some(netns);
        Self::start_with(script).await
    }

    async fn start_with(script: ServiceScript) -> Self {
        // Several private clusters may run beside the shared one.
        let script = script.with_env("KAFKA_HEAP", "384m");
        script.run(&["start"]).await;
        Self { script }
    }

    /// The bootstrap list of the three nodes.
    pub fn brokers(&self) -> String {
        self.script.addresses("", 0..3)
    }

    /// Kills node 1-3 with SIGKILL and waits until it is gone.
    pub async fn kill(&self, node: i32) {
        self.script.run(&["kill", &node.to_string()]).await;
    }

    /// Starts node 1-3 again and waits until the cluster lists all three.
    pub async fn start_node(&self, node: i32) {
        self.script.run(&["start-node", &node.to_string()]).await;
    }

    /// Stops every node (SIGTERM, as an operator would).
    pub async fn stop(&self) {
        self.script.run(&["stop"]).await;
    }

    /// Starts every node that is not running and waits for all three.
    pub async fn start_all(&self) {
        self.script.run(&["start"]).await;
    }

    /// Stops all three nodes with SIGSTOP: connections stay open and no
    /// node answers, as behind a network partition. Drop still kills them.
    pub fn freeze_all(&self) {
        let output = self
            .script
            .command(&["freeze", "1", "2", "3"])
            .output()
            .expect("kafka.sh freeze");
        assert!(output.status.success(), "kafka.sh freeze: {output:?}");
    }

    /// Kills all three nodes with SIGKILL, as a power cut would; blocks
    /// for the few milliseconds that takes (for sync callers).
    pub fn kill_all(&self) {
        let _ = self.script.command(&["kill", "1", "2", "3"]).output();
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        // Nothing is left to keep, and the temp dir goes with it.
        self.kill_all();
    }
}

/// Redis with Sentinel owned by one test (one master, two replicas, three
/// sentinels, service `switchyard`), run by
/// `scripts/services/redis-sentinel.sh` with its data in a temp dir and its
/// own ports: node N on `base + N - 1`, sentinel N on `base + 9 + N`. Every
/// test passes its own `base` (below 32768). Killed on drop.
pub struct PrivateSentinel {
    /// The port of node 1, the first master.
    pub base: u16,
    script: ServiceScript,
}

impl PrivateSentinel {
    /// Starts the deployment and waits until the sentinels see the master
    /// and both replicas; panics with the script's output if not.
    pub async fn start(base: u16) -> Self {
        let script = ServiceScript::new("redis-sentinel.sh", &[], "SENTINEL", base);
        script.run(&["start"]).await;
        Self { base, script }
    }

    /// `redis://127.0.0.1:{port}` of the three sentinels.
    pub fn sentinels(&self) -> Vec<String> {
        (10..13)
            .map(|n| self.script.addresses("redis://", n..n + 1))
            .collect()
    }

    /// The node (1-3) the sentinels name master.
    pub async fn master(&self) -> u16 {
        let port: u16 = self
            .script
            .run(&["master"])
            .await
            .trim()
            .parse()
            .expect("a master port");
        port - self.base + 1
    }

    /// Kills node 1-3 with SIGKILL and waits until it is gone.
    pub async fn kill(&self, node: u16) {
        self.script.run(&["kill", &node.to_string()]).await;
    }

    /// Starts node 1-3 again from its config file.
    pub async fn start_node(&self, node: u16) {
        self.script.run(&["start-node", &node.to_string()]).await;
    }

    /// Asks a sentinel to fail over now (the master is demoted, not killed).
    pub fn failover(&self) {
        let output = Command::new("redis-cli")
            .args(["-p", &(self.base + 10).to_string()])
            .args(["SENTINEL", "FAILOVER", "switchyard"])
            .output()
            .expect("redis-cli");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.starts_with("OK"), "SENTINEL FAILOVER: {text}");
    }

    /// `ROLE` of node 1-3: `master` or `slave`.
    pub fn role(&self, node: u16) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &(self.base + node - 1).to_string(), "ROLE"])
            .output()
            .expect("redis-cli");
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines().next().unwrap_or_default().to_owned()
    }
}

impl Drop for PrivateSentinel {
    fn drop(&mut self) {
        let _ = self.script.command(&["stop"]).output();
    }
}

/// A six-node Redis Cluster (three masters, three replicas) owned by one
/// test, run by `scripts/services/redis-cluster.sh` with its data in a temp
/// dir and its own ports, `base..base + 6` (the cluster bus on each + 10000,
/// so `base` stays below 22768). For a test that shuts a node down: the
/// shared cluster on 7000-7005 serves every other test of the process.
/// Killed on drop.
pub struct PrivateRedisCluster {
    /// The port of the first node.
    pub base: u16,
    script: ServiceScript,
}

impl PrivateRedisCluster {
    /// Starts the nodes, creates the cluster and waits until every master
    /// has its replica.
    pub async fn start(base: u16) -> Self {
        let script = ServiceScript::new("redis-cluster.sh", &[], "REDIS_CLUSTER", base);
        script.run(&["start"]).await;
        Self { base, script }
    }

    /// The seed URL a cluster client starts from.
    pub fn url(&self) -> String {
        self.script.addresses("redis://", 0..1)
    }

    /// The URL of every node, masters and replicas.
    pub fn node_urls(&self) -> Vec<String> {
        (0..6)
            .map(|n| self.script.addresses("redis://", n..n + 1))
            .collect()
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        let _ = self.script.command(&["stop"]).output();
    }
}

/// A three-node NATS JetStream cluster owned by one test, run by
/// `scripts/services/nats.sh cluster` with its data in a temp dir (so a
/// restarted node finds its streams) and its own ports: node N (server
/// name `nN`) serves clients on `base + N - 1`. Every test passes its own
/// `base` (below 32768). Killed on drop.
pub struct PrivateNatsCluster {
    script: ServiceScript,
}

impl PrivateNatsCluster {
    /// Starts the three nodes and waits until JetStream is ready on each.
    pub async fn start(base: u16) -> Self {
        let script = ServiceScript::new("nats.sh", &["cluster"], "NATS", base);
        script.run(&["start"]).await;
        Self { script }
    }

    /// The client URLs of the three nodes, comma separated.
    pub fn url(&self) -> String {
        self.script.addresses("nats://", 0..3)
    }

    /// The client URL of node 1-3 alone.
    pub fn node_url(&self, node: u16) -> String {
        self.script.addresses("nats://", node - 1..node)
    }

    /// Kills node 1-3 with SIGKILL and waits until it is gone.
    pub async fn kill(&self, node: u16) {
        self.script.run(&["kill", &node.to_string()]).await;
    }

    /// Starts node 1-3 again with its data and waits until it is ready.
    pub async fn start_node(&self, node: u16) {
        self.script.run(&["start-node", &node.to_string()]).await;
    }
}

impl Drop for PrivateNatsCluster {
    fn drop(&mut self) {
        let _ = self.script.command(&["stop"]).output();
    }
}

/// One test's private copy of a service that a script of
/// `scripts/services/` runs: its ports from `base` (below 32768), its data
/// in a temp dir that goes with it (`{VAR}_BASE_PORT`, `{VAR}_DATA`).
struct ServiceScript {
    script: &'static str,
    /// Arguments before every command (`nats.sh cluster ...`).
    prefix: &'static [&'static str],
    var: &'static str,
    env: Vec<(&'static str, String)>,
    base: u16,
    dir: tempfile::TempDir,
    /// The network namespace the script runs in (`ip netns exec`), if not
    /// the test's own.
    netns: Option<&'static str>,
}

impl ServiceScript {
    fn new(
        script: &'static str,
        prefix: &'static [&'static str],
        var: &'static str,
        base: u16,
    ) -> Self {
        Self {
            script,
            prefix,
            var,
            env: Vec::new(),
            base,
            dir: tempfile::tempdir().expect("temp dir"),
            netns: None,
        }
    }

    fn with_env(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.env.push((name, value.into()));
        self
    }

    /// `{scheme}127.0.0.1:{base + n}` for each offset `n`, comma separated.
    fn addresses(&self, scheme: &str, offsets: std::ops::Range<u16>) -> String {
        offsets
            .map(|n| format!("{scheme}127.0.0.1:{}", self.base + n))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = match self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, "bash"]);
                command
            }
            None => Command::new("bash"),
        };
        command
            .arg(
                // The repository root, above testkit/.
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .ancestors()
                    .map(|dir| dir.join("scripts/services").join(self.script))
                    .find(|script| script.is_file())
                    .expect("scripts/services/ above this crate"),
            )
            .args(self.prefix)
            .args(args)
            .env(format!("{}_BASE_PORT", self.var), self.base.to_string())
            .env(format!("{}_DATA", self.var), self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        command
    }

    /// Runs the script and returns its standard output; panics with its
    /// output if it fails.
    async fn run(&self, args: &[&str]) -> String {
        let mut command = self.command(args);
        let what = format!(
            "{} {} (base port {})",
            self.script,
            self.prefix
                .iter()
                .chain(args)
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
            self.base
        );
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("the script's thread")
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            output.status.success(),
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}
