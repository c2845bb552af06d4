//! The simulated WAN: Toxiproxy (`scripts/services/toxiproxy.sh start`)
//! driven through its HTTP API. Each [`Link`] is one proxied TCP port with
//! a latency each way; it can be cut and restored, and is deleted on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Where the Toxiproxy API listens (`TOXIPROXY_PORT` in the script).
pub const API: &str = "127.0.0.1:27474";

/// One HTTP/1.1 request to the API; returns (status, body).
fn request(method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(API).map_err(|e| {
        format!("toxiproxy API at {API}: {e} (start it: scripts/services/toxiproxy.sh start)")
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {API}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .map_err(|e| e.to_string())?;
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad reply from toxiproxy: {reply:?}"))?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn expect(method: &str, path: &str, body: &str) {
    match request(method, path, body) {
        Ok((status, _)) if (200..300).contains(&status) => {}
        Ok((status, reply)) => panic!("toxiproxy {method} {path}: {status} {reply}"),
        Err(err) => panic!("{err}"),
    }
}

/// A proxied port: `listen` forwards to `upstream`, `latency` added each way.
pub struct Link {
    pub name: String,
    pub listen: SocketAddr,
}

impl Link {
    /// A link on loopback: `127.0.0.1:{listen}` to `127.0.0.1:{upstream}`.
    pub fn new(name: &str, listen: u16, upstream: u16, latency: Duration) -> Self {
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Self::between(name, loopback(listen), loopback(upstream), latency)
    }

    /// Creates the proxy (replacing a leftover of the same name). The
    /// addresses may be any the root namespace has: cli/tests/it/wan_netns.rs
    /// listens on a region namespace's veth peer.
    pub fn between(
        name: &str,
        listen: SocketAddr,
        upstream: SocketAddr,
        latency: Duration,
    ) -> Self {
        let _ = request("DELETE", &format!("/proxies/{name}"), "");
        expect(
            "POST",
            "/proxies",
            &format!(
                r#"{{"name":"{name}","listen":"{listen}","upstream":"{upstream}","enabled":true}}"#
            ),
        );
        let ms = latency.as_millis();
        for stream in ["upstream", "downstream"] {
            expect(
                "POST",
                &format!("/proxies/{name}/toxics"),
                &format!(
                    r#"{{"name":"latency_{stream}","type":"latency","stream":"{stream}","attributes":{{"latency":{ms},"jitter":0}}}}"#
                ),
            );
        }
        Self {
            name: name.to_owned(),
            listen,
        }
    }

    /// Changes the latency added each way, on open connections too.
    pub fn set_latency(&self, latency: Duration) {
        let ms = latency.as_millis();
        for stream in ["upstream", "downstream"] {
            expect(
                "POST",
                &format!("/proxies/{}/toxics/latency_{stream}", self.name),
                &format!(r#"{{"attributes":{{"latency":{ms},"jitter":0}}}}"#),
            );
        }
    }

    /// Cuts the link (open connections are closed, new ones refused) or
    /// restores it.
    pub fn set_enabled(&self, enabled: bool) {
        expect(
            "POST",
            &format!("/proxies/{}", self.name),
            &format!(r#"{{"enabled":{enabled}}}"#),
        );
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = request("DELETE", &format!("/proxies/{}", self.name), "");
    }
}
