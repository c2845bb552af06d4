//! `switchyard serve` as a real process on free loopback ports, for tests
//! that need a fresh process (its own metrics recorder, signals, exit code).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `switchyard serve`; killed on drop if it is still running.
pub struct Served {
    child: Child,
    log: mpsc::Receiver<String>,
    /// The bound gRPC address.
    pub grpc: SocketAddr,
    /// The bound telemetry address.
    pub telemetry: SocketAddr,
    /// The log line that said where it listens.
    pub serving: String,
}

impl Served {
    /// Serves `config` (none: the embedded default) with `env` on top, both
    /// listeners on port 0, and waits until it says where it listens.
    pub fn start(config: Option<&Path>, env: &[(&str, &str)]) -> Self {
        Self::spawn(Command::new(env!("CARGO_BIN_EXE_switchyard")), config, env)
    }

    /// Like [`Served::start`], inside network namespace `netns`
    /// (`ip netns exec`, which execs the binary: the child is the sidecar
    /// itself, so drop still kills it). Its listeners default to the
    /// namespace's loopback; `env` moves them.
    #[cfg(feature = "it-netns")]
    pub fn start_in_netns(netns: &str, config: Option<&Path>, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(env!("CARGO_BIN_EXE_switchyard"));
        Self::spawn(command, config, env)
    }

    fn spawn(mut command: Command, config: Option<&Path>, env: &[(&str, &str)]) -> Self {
        command.arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        command
            .env("SWITCHYARD__SIDECAR__LISTEN", "127.0.0.1:0")
            .env("SWITCHYARD__TELEMETRY__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env_remove("SWITCHYARD_CONFIG")
            .env_remove("SWITCHYARD_LOG_FORMAT");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let log = lines(&mut child);
        let mut served = Self {
            child,
            log,
            grpc: SocketAddr::from(([0, 0, 0, 0], 0)),
            telemetry: SocketAddr::from(([0, 0, 0, 0], 0)),
            serving: String::new(),
        };
        let line = served.wait_for("sidecar serving");
        served.grpc = address_after(&line, "grpc");
        served.telemetry = address_after(&line, "telemetry");
        served.serving = line;
        served
    }

    /// The next log line containing `needle`, within 20 s.
    pub fn wait_for(&self, needle: &str) -> String {
        self.wait_for_line(|line| line.contains(needle))
    }

    /// The next log line that `wanted` accepts, within 20 s.
    pub fn wait_for_line(&self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!(
            "no log line as wanted within 20 s; saw:\n{}",
            seen.join("\n")
        );
    }

    /// Sends a signal (`TERM`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name}");
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> ExitStatus {
        self.child.wait().expect("the child is ours")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `key=ADDR` (text logs) or `"key":"ADDR"` (JSON logs) in a log line.
fn address_after(line: &str, key: &str) -> SocketAddr {
    for prefix in [format!("{key}="), format!("\"{key}\":\"")] {
        if let Some(start) = line.find(&prefix) {
            let rest = &line[start + prefix.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            if let Ok(addr) = rest[..end].parse() {
                return addr;
            }
        }
    }
    panic!("no {key} address in {line:?}");
}

/// Forwards the child's stderr and stdout lines to a channel.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    for pipe in [
        Box::new(stderr) as Box<dyn std::io::Read + Send>,
        Box::new(stdout),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    rx
}
