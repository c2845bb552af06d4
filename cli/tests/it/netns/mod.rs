//! Regions in network namespaces, for cli/tests/it/wan_netns.rs: the two
//! namespaces of `scripts/services/netns.sh`, this run's ports in them,
//! a `redis-server` per region started inside its namespace, and a probe
//! of what a namespace can connect to (the isolation the test asserts).
//!
//! The namespaces have no route to each other: from inside `sy-eu` only
//! `10.77.2.0/30` exists (its own end and the root namespace's), so the
//! only way to `us` is a proxy listening on the root side, 10.77.2.1.

pub mod count;
pub mod fleet;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One region's namespace and its veth pair to the root namespace.
#[derive(Debug)]
pub struct Namespace {
    /// The namespace's name (`ip netns exec NAME`).
    pub name: &'static str,
    /// The region it holds.
    pub region: &'static str,
    /// The namespace's end of the pair (10.77.N.2).
    pub inner: Ipv4Addr,
    /// The root namespace's end (10.77.N.1): where proxies for this region
    /// listen.
    pub root: Ipv4Addr,
}

/// Region `us`: Kafka lives here.
pub static US: Namespace = Namespace {
    name: "sy-us",
    region: "us",
    inner: Ipv4Addr::new(10, 77, 1, 2),
    root: Ipv4Addr::new(10, 77, 1, 1),
};

/// Region `eu`: reaches Kafka only through Toxiproxy on 10.77.2.1.
pub static EU: Namespace = Namespace {
    name: "sy-eu",
    region: "eu",
    inner: Ipv4Addr::new(10, 77, 2, 2),
    root: Ipv4Addr::new(10, 77, 2, 1),
};

impl Namespace {
    /// Panics, saying how to create it, if the namespace is missing: the
    /// test must fail there, not pass without having run.
    pub fn require(&self) {
        let path = Path::new("/run/netns").join(self.name);
        assert!(
            path.exists(),
            "network namespace {} is missing: run `scripts/services/netns.sh start` \
             (as root; scripts/test.sh does)",
            self.name
        );
    }

    /// `program` run inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.name, program]);
        command
    }

    /// Opens (and closes) a TCP connection to `to` from inside this
    /// namespace, within 3 s; the error is what the kernel said.
    pub fn connect_from(&self, to: SocketAddr) -> Result<(), String> {
        let output = self
            .command("timeout")
            .args(["3", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{}/{}", to.ip(), to.port()))
            .output()
            .map_err(|e| format!("ip netns exec {}: {e}", self.name))?;
        if output.status.success() {
            Ok(())
        } else {
            // bash says it twice (connect, then the redirection): once is enough.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let said = stderr.lines().next().unwrap_or_default().to_owned();
            Err(if said.is_empty() {
                format!("no connection within 3 s ({})", output.status)
            } else {
                said
            })
        }
    }
}

/// Slots of this test's block (29000-29999, cli/tests/it/wan_netns.rs): slot k
/// has Kafka clients on 29000+3k.. (controllers +100, WAN listeners +200,
/// proxies +300, as kafka.sh lays them out) and Redis on 29400+k.
const SLOTS: u16 = 33;

/// The ports of one run.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Kafka node N's client listener, in `sy-us`: `kafka + N - 1`.
    pub kafka: u16,
    /// Node N's WAN listener on 10.77.1.2: `kafka + 200 + N - 1`.
    pub wan: u16,
    /// The proxy to node N on 10.77.2.1: `kafka + 300 + N - 1`.
    pub proxy: u16,
    /// Each region's Redis, in its namespace (the same port in both).
    pub redis: u16,
}

impl Ports {
    /// The first free slot, starting at one picked by process id: a
    /// leftover of a run that died (a broker or Redis still inside a
    /// namespace, a proxy still listening) makes this run take another.
    pub fn pick() -> Self {
        let start = std::process::id() as u16 % SLOTS;
        (0..SLOTS)
            .map(|i| Self::slot((start + i) % SLOTS))
            .find(Self::free)
            .expect("every slot of ports 29000-29999 is taken: a leftover? run `scripts/services/netns.sh stop`")
    }

    fn slot(k: u16) -> Self {
        let kafka = 29000 + 3 * k;
        Self {
            kafka,
            wan: kafka + 200,
            proxy: kafka + 300,
            redis: 29400 + k,
        }
    }

    /// Nothing of a leftover answers on the namespaces' veth addresses (a
    /// broker's WAN listener is in the same process as its client one) and
    /// the proxy ports are free in the root namespace.
    fn free(&self) -> bool {
        let answers = |ip: Ipv4Addr, port: u16| {
            TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(200)).is_ok()
        };
        (0..3).all(|n| !answers(US.inner, self.wan + n))
            && !answers(US.inner, self.redis)
            && !answers(EU.inner, self.redis)
            && (0..3).all(|n| TcpListener::bind((EU.root, self.proxy + n)).is_ok())
    }
}

/// A `redis-server` inside a region's namespace, bound on its loopback
/// (for the region's sidecars) and its veth address (so the test can see
/// from the root namespace that it runs, and that the other region cannot
/// reach it). Data in a temp dir; killed on drop.
pub struct NsRedis {
    pub port: u16,
    pub ns: &'static Namespace,
    child: Child,
    _dir: tempfile::TempDir,
}

impl NsRedis {
    /// Starts it and waits (20 s at most) until it accepts connections.
    pub fn start(ns: &'static Namespace, port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // As testkit/src/servers.rs's private Redis: every write in the append-only
        // file before it is answered, as presence and offline queues run.
        let child = ns
            .command("redis-server")
            .args(["--bind", "127.0.0.1", &ns.inner.to_string()])
            .args(["--port", &port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (apt-get install redis-server)");
        let redis = Self {
            port,
            ns,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&redis.veth_addr(), Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server in {} not listening on {} after 20 s",
                ns.name,
                redis.veth_addr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    /// The URL the region's sidecars use: the namespace's loopback.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its address on the namespace's veth end.
    pub fn veth_addr(&self) -> SocketAddr {
        (self.ns.inner, self.port).into()
    }
}

impl Drop for NsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
