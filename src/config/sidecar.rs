//! `[sidecar]`: the settings of `switchyard serve` (listen addresses,
//! tokens, TLS, user tokens, drain), as plain data checked with the rest of
//! [`Settings`](super::Settings); the server that uses them is
//! [`crate::sidecar`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::topology::{check, IdKind};

use super::problem::Problem;

/// `[sidecar]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SidecarConfig {
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    /// The `host:port` other sidecars use to reach this one (direct links),
    /// registered for gateways that attach without an address. Empty: the
    /// bound listen address (right on loopback, wrong behind NAT or in a pod
    /// listening on 0.0.0.0).
    pub advertise: String,
    /// `[sidecar.tokens]`: the token of each gateway allowed to attach, by
    /// gateway id. When empty, any gateway may attach (the embedded default).
    pub tokens: BTreeMap<String, SecretSource>,
    /// Token for the Admin API. Required when gateway tokens are set.
    pub admin_token: Option<SecretSource>,
    /// Token sidecars present to each other on direct links.
    pub peer_token: Option<SecretSource>,
    /// `[sidecar.user_tokens]`: `Online` must carry a JWT for the user.
    /// Absent: gateways are trusted to say which users they host.
    pub user_tokens: Option<UserTokensConfig>,
    /// Serve a listen address other hosts can reach without gateway tokens.
    /// Off: such a config is refused, since anyone who can connect could
    /// send as any gateway and claim any user.
    pub allow_unauthenticated: bool,
    /// On SIGTERM, how long `/readyz` answers 503 (and gRPC health says
    /// NOT_SERVING) while calls are still taken, before the drain starts:
    /// load balancers and Kubernetes endpoints need that long to stop
    /// sending new work here.
    #[serde(with = "humantime_serde")]
    pub readiness_grace: Duration,
    /// On SIGTERM, after the readiness grace, how long in-flight calls may
    /// take to finish.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// `[sidecar.tls]`: TLS (mutual by default) for gateways and peers.
    /// Absent: plaintext.
    pub tls: Option<TlsConfig>,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            advertise: String::new(),
            tokens: BTreeMap::new(),
            admin_token: None,
            peer_token: None,
            user_tokens: None,
            allow_unauthenticated: false,
            readiness_grace: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

impl SidecarConfig {
    /// Every problem with these settings, keyed under `sidecar`.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let sources = self
            .tokens
            .iter()
            .map(|(gateway, source)| (format!("sidecar.tokens.{gateway}"), source))
            .chain(
                self.admin_token
                    .iter()
                    .map(|s| ("sidecar.admin_token".to_owned(), s)),
            )
            .chain(
                self.peer_token
                    .iter()
                    .map(|s| ("sidecar.peer_token".to_owned(), s)),
            )
            .chain(
                self.user_tokens
                    .iter()
                    .map(|u| ("sidecar.user_tokens.key".to_owned(), &u.key)),
            );
        for (key, source) in sources {
            if source.env.is_some() == source.file.is_some() {
                problems.push(Problem {
                    key,
                    reason: "set exactly one of `env` (a variable name) or `file` (a path)".into(),
                });
            }
        }
        for gateway in self.tokens.keys() {
            if let Err(err) = check("gateway_id", IdKind::Name, gateway) {
                problems.push(Problem {
                    key: format!("sidecar.tokens.{gateway}"),
                    reason: format!("not a gateway id: {err}"),
                });
            }
        }
        if self.tokens.is_empty() && !self.listen.ip().is_loopback() && !self.allow_unauthenticated
        {
            problems.push(Problem {
                key: "sidecar.listen".into(),
                reason: format!(
                    "{} is reachable from other hosts and no sidecar.tokens are set: anyone who \
                     can connect could send as any gateway. Set tokens, listen on loopback, or \
                     set sidecar.allow_unauthenticated = true",
                    self.listen
                ),
            });
        }
        if !self.tokens.is_empty() && self.admin_token.is_none() {
            problems.push(Problem {
                key: "sidecar.admin_token".into(),
                reason: "required when sidecar.tokens is set (the Admin API would be open)".into(),
            });
        }
        problems
    }
}

/// Where a secret is read from; the value itself never appears in config
/// files or logs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Name of an environment variable holding the secret.
    pub env: Option<String>,
    /// Path of a file holding the secret (surrounding whitespace is ignored).
    pub file: Option<PathBuf>,
}

/// `[sidecar.tls]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This sidecar's certificate chain (PEM), served to clients and
    /// presented to peers.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA (PEM) that signs the certificates of gateways and sidecars;
    /// peers' server certificates are verified against it.
    pub ca: PathBuf,
    /// Require a client certificate signed by `ca` (mutual TLS).
    #[serde(default = "yes")]
    pub client_auth: bool,
}

fn yes() -> bool {
    true
}

/// `[sidecar.user_tokens]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserTokensConfig {
    /// How the tokens are signed.
    pub algorithm: UserTokenAlgorithm,
    /// HS256: the shared secret. RS256: the public key, PEM.
    pub key: SecretSource,
    /// The `iss` every token must carry, if set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The `aud` every token must carry, if set.
    #[serde(default)]
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` (and `nbf`).
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// The signature algorithms accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum UserTokenAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256; the sidecar holds only the public key.
    RS256,
}
