//! The operator's side of the canary admin RPCs: `switchyard canary
//! status|set|rollback` connects to a sidecar's Admin API, makes one call and
//! renders the answer as text.

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

use crate::proto::{self, admin_client::AdminClient};

/// What the operator asks of the canary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CanaryCommand {
    /// Show the canary, its limits, last rollback and window figures.
    Status,
    /// Set the share (0-100).
    Set(u32),
    /// Roll back to 0%, with the operator's reason.
    Rollback(String),
}

/// Why a canary command failed.
#[derive(Debug, thiserror::Error)]
pub enum CanaryCtlError {
    /// The address is not a valid URI.
    #[error("invalid admin address {addr:?}: {reason}")]
    Address {
        /// The address given.
        addr: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The sidecar could not be reached.
    #[error("cannot connect to the admin API at {addr}")]
    Connect {
        /// The address given.
        addr: String,
        /// The connection error.
        source: tonic::transport::Error,
    },
    /// The token variable is unset or not a valid header value.
    #[error("admin token from ${env}: {reason}")]
    Token {
        /// The environment variable named by `--token-env`.
        env: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The sidecar refused or failed the call.
    #[error("{rpc} failed: {} ({:?})", .status.message(), .status.code())]
    Call {
        /// The RPC.
        rpc: &'static str,
        /// The sidecar's answer.
        status: tonic::Status,
    },
}

/// Runs `command` against the Admin API at `addr`, authenticating with the
/// token in the environment variable `token_env` if given; returns the text
/// to print.
pub async fn run(
    addr: &str,
    token_env: Option<&str>,
    command: CanaryCommand,
) -> Result<String, CanaryCtlError> {
    let bearer = token_env
        .map(|env| {
            let token = std::env::var(env).map_err(|e| CanaryCtlError::Token {
                env: env.into(),
                reason: e.to_string(),
            })?;
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|e| CanaryCtlError::Token {
                env: env.into(),
                reason: e.to_string(),
            })
        })
        .transpose()?;
    let endpoint = Channel::from_shared(addr.to_string()).map_err(|e| CanaryCtlError::Address {
        addr: addr.into(),
        reason: e.to_string(),
    })?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| CanaryCtlError::Connect {
            addr: addr.into(),
            source,
        })?;
    let mut client = AdminClient::with_interceptor(channel, move |mut request: Request<()>| {
        if let Some(bearer) = &bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        Ok(request)
    });
    let call = |rpc| move |status| CanaryCtlError::Call { rpc, status };
    match command {
        CanaryCommand::Status => {
            let status = client
                .canary_status(proto::CanaryStatusRequest {})
                .await
                .map_err(call("CanaryStatus"))?
                .into_inner();
            Ok(render(status.canary.as_ref()))
        }
        CanaryCommand::Set(share) => {
            let set = client
                .set_canary_share(proto::SetCanaryShareRequest { share })
                .await
                .map_err(call("SetCanaryShare"))?
                .into_inner();
            Ok(format!(
                "canary share {}% -> {}%\n",
                set.old_share, set.new_share
            ))
        }
        CanaryCommand::Rollback(reason) => {
            let rolled = client
                .rollback_canary(proto::RollbackCanaryRequest { reason })
                .await
                .map_err(call("RollbackCanary"))?
                .into_inner();
            Ok(format!("canary rolled back: {}% -> 0%\n", rolled.old_share))
        }
    }
}

/// The canary state as `key: value` lines.
pub fn render(canary: Option<&proto::CanaryState>) -> String {
    let Some(c) = canary else {
        return "no canary configured\n".into();
    };
    let mut out = format!(
        "canary: {} -> {}  share: {}%  unit: {}  mode: {}\n",
        c.from, c.to, c.share, c.unit, c.mode
    );
    if let Some(r) = &c.rollback {
        out += &format!(
            "auto-rollback: {}  window: {} ms  max error rate: {:.2}%  max p99: {:.1} ms  min samples: {}  max down: {} ms\n",
            if r.enabled { "on" } else { "off" },
            r.window_ms,
            r.max_error_rate * 100.0,
            r.max_p99_ms,
            r.min_samples,
            r.max_down_ms
        );
    }
    if let Some(s) = &c.canary_stats {
        out += &format!(
            "{} cohort over the window: published {}  failed {}  confirmed {}  p99 {:.2} ms\n",
            c.to, s.published, s.failed, s.delivered, s.p99_ms
        );
    }
    out += &match &c.last_rollback {
        Some(r) => format!(
            "last rollback: from {}% at {} (unix): {}\n",
            r.from_share, r.at_unix_secs, r.reason
        ),
        None => "last rollback: none\n".into(),
    };
    out
}
