//! The operator's side of the Admin API: `switchyard canary
//! status|set|rollback`, `switchyard state` and `switchyard dead-letters
//! list|show|replay|purge` connect to a sidecar, make one call and render
//! the answer as text (durations as `30s`, times in RFC 3339).

use std::time::{Duration, UNIX_EPOCH};

use humantime_serde::re::humantime::{format_duration, format_rfc3339_seconds};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

use switchyard::cause::Cause;
use switchyard::proto::{self, admin_client::AdminClient};

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

/// What the operator asks of the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterCommand {
    /// The users with dead letters, or one user's (summary lines).
    List {
        /// Whose; `None` for the users.
        user: Option<String>,
        /// At most this many (0: the sidecar's default, 100).
        limit: u32,
    },
    /// One dead letter in full: reason, detail, every field, the payload.
    Show {
        /// Whose.
        user: String,
        /// Its message id.
        id: String,
    },
    /// Back to the offline queue and on to the user's gateways.
    Replay {
        /// Whose.
        user: String,
        /// Which; empty for every readable one.
        ids: Vec<String>,
    },
    /// Delete.
    Purge {
        /// Whose.
        user: String,
        /// Which; empty for every one.
        ids: Vec<String>,
    },
}

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminCtlError {
    /// The address is not a valid URI.
    #[error("invalid admin address {addr:?}")]
    Address {
        /// The address given.
        addr: String,
        /// Why it is invalid.
        #[source]
        reason: Cause,
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
    #[error("admin token from ${env} is not usable")]
    Token {
        /// The environment variable named by `--token-env`.
        env: String,
        /// What is wrong with it.
        #[source]
        reason: Cause,
    },
    /// `dead-letters show` named a letter the user does not have.
    #[error("user {user} has no dead letter {id}")]
    NoSuchLetter {
        /// The user.
        user: String,
        /// The message id asked for.
        id: String,
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

/// Puts the admin token on every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(bearer) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        Ok(request)
    }
}

/// `host:port` as a URI: `http://` unless a scheme is given.
pub fn admin_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// A connection to one sidecar's Admin API.
pub struct AdminCtl {
    client: AdminClient<InterceptedService<Channel, Bearer>>,
}

impl AdminCtl {
    /// Connects to `addr` (`host:port` or a URI), authenticating with the
    /// token in the environment variable `token_env` if given.
    pub async fn connect(addr: &str, token_env: Option<&str>) -> Result<Self, AdminCtlError> {
        let bearer = token_env
            .map(|env| {
                let token = std::env::var(env).map_err(|e| AdminCtlError::Token {
                    env: env.into(),
                    reason: Cause::new(e),
                })?;
                MetadataValue::try_from(format!("Bearer {token}")).map_err(|e| {
                    AdminCtlError::Token {
                        env: env.into(),
                        reason: Cause::new(e),
                    }
                })
            })
            .transpose()?;
        let uri = admin_uri(addr);
        let endpoint = Channel::from_shared(uri.clone()).map_err(|e| AdminCtlError::Address {
            addr: addr.into(),
            reason: Cause::new(e),
        })?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| AdminCtlError::Connect { addr: uri, source })?;
        Ok(Self {
            client: AdminClient::with_interceptor(channel, Bearer(bearer)),
        })
    }

    /// Runs a canary command; returns the text to print.
    pub async fn canary(&mut self, command: CanaryCommand) -> Result<String, AdminCtlError> {
        let call = |rpc| move |status| AdminCtlError::Call { rpc, status };
        let client = &mut self.client;
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

    /// Runs a dead-letter command; returns the text to print.
    pub async fn dead_letters(
        &mut self,
        command: DeadLetterCommand,
    ) -> Result<String, AdminCtlError> {
        let call = |rpc| move |status| AdminCtlError::Call { rpc, status };
        let client = &mut self.client;
        let list = |user: String, limit| proto::DeadLettersRequest { user, limit };
        match command {
            DeadLetterCommand::List { user, limit } => {
                let listed = client
                    .dead_letters(list(user.unwrap_or_default(), limit))
                    .await
                    .map_err(call("DeadLetters"))?
                    .into_inner();
                Ok(render_dead_letters(&listed))
            }
            DeadLetterCommand::Show { user, id } => {
                // The most one call lists: a dead-letter queue is capped
                // like the offline queue (offline.max_per_user).
                let listed = client
                    .dead_letters(list(user.clone(), 10_000))
                    .await
                    .map_err(call("DeadLetters"))?
                    .into_inner();
                let letter = listed
                    .letters
                    .iter()
                    .find(|l| l.message_id.eq_ignore_ascii_case(&id))
                    .ok_or(AdminCtlError::NoSuchLetter { user, id })?;
                Ok(render_dead_letter(letter))
            }
            DeadLetterCommand::Replay { user, ids } => {
                let replayed = client
                    .replay_dead_letters(proto::ReplayDeadLettersRequest {
                        user: user.clone(),
                        message_ids: ids,
                    })
                    .await
                    .map_err(call("ReplayDeadLetters"))?
                    .into_inner();
                Ok(format!(
                    "{user}: {} dead letter(s) back in the offline queue; {}\n",
                    replayed.replayed,
                    match replayed.flagged_gateways.as_slice() {
                        [] => "delivered when the user connects".to_string(),
                        gateways =>
                            format!("delivered at the next heartbeat of {}", gateways.join(", ")),
                    }
                ))
            }
            DeadLetterCommand::Purge { user, ids } => {
                let purged = client
                    .purge_dead_letters(proto::PurgeDeadLettersRequest {
                        user: user.clone(),
                        message_ids: ids,
                    })
                    .await
                    .map_err(call("PurgeDeadLetters"))?
                    .into_inner();
                Ok(format!(
                    "{user}: {} dead letter(s) deleted\n",
                    purged.purged
                ))
            }
        }
    }

    /// The sidecar's Admin `State` as text.
    pub async fn state(&mut self) -> Result<String, AdminCtlError> {
        let state = self
            .client
            .state(proto::StateRequest {})
            .await
            .map_err(|status| AdminCtlError::Call {
                rpc: "State",
                status,
            })?
            .into_inner();
        Ok(render_state(&state))
    }
}

/// Runs `command` against the Admin API at `addr`, authenticating with the
/// token in the environment variable `token_env` if given; returns the text
/// to print.
pub async fn run(
    addr: &str,
    token_env: Option<&str>,
    command: CanaryCommand,
) -> Result<String, AdminCtlError> {
    AdminCtl::connect(addr, token_env)
        .await?
        .canary(command)
        .await
}

/// Admin `State` as text: config, transports, routing, gateways, hot
/// pairs, canary.
pub fn render_state(state: &proto::StateResponse) -> String {
    let mut out = format!(
        "config: {}\n",
        if state.config_path.is_empty() {
            "the embedded default"
        } else {
            &state.config_path
        }
    );
    out += "transports:\n";
    for t in &state.transports {
        out += &if t.up {
            format!("  {:<8} up\n", t.kind)
        } else {
            format!("  {:<8} DOWN: {}\n", t.kind, t.reason)
        };
    }
    if let Some(r) = &state.routing {
        out += &format!(
            "routing: same region {}  cross region {}  fallbacks [{}]\n",
            r.same_region,
            r.cross_region,
            r.fallbacks.join(", ")
        );
    }
    out += &format!("gateways: {}\n", state.gateways.len());
    for g in &state.gateways {
        out += &format!(
            "  {} ({})  {}  {}\n",
            g.gateway_id,
            g.region,
            g.address,
            if g.streaming {
                "attached"
            } else {
                "not streaming"
            }
        );
    }
    out += &format!("hot pairs: {}\n", state.hot_pairs.len());
    for p in &state.hot_pairs {
        out += &format!(
            "  {} -> {}  {:.0} msg/s\n",
            p.from_gateway, p.to_gateway, p.per_second
        );
    }
    for q in &state.route_quality {
        out += &format!(
            "quality: {} to region {}: {} p99 {:.1} ms, {} of {} failed; {}\n",
            q.route,
            q.region,
            q.transport,
            q.p99_micros as f64 / 1000.0,
            q.failed,
            q.published,
            if q.degraded_to.is_empty() {
                "within the limits".to_owned()
            } else {
                format!(
                    "degraded for {:.1} s ({}): {} first",
                    q.degraded_for_millis as f64 / 1000.0,
                    q.degraded_reason,
                    q.degraded_to
                )
            }
        );
    }
    out + &render(state.canary.as_ref())
}

fn rfc3339_micros(micros: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0));
    format_rfc3339_seconds(at).to_string()
}

/// `DeadLetters` as text: a line per user, or a line per letter.
pub fn render_dead_letters(listed: &proto::DeadLettersResponse) -> String {
    let mut out = String::new();
    for u in &listed.users {
        out += &format!("{}  {} dead letter(s)\n", u.user, u.count);
    }
    for l in &listed.letters {
        let summary = l.envelope.as_ref().map_or_else(
            || "(unreadable)".to_string(),
            |e| format!("from {}  {} B", e.sender_user, e.payload.len()),
        );
        out += &format!(
            "{}  {}  {}  {}: {}\n",
            l.message_id,
            rfc3339_micros(l.dead_at_unix_micros),
            summary,
            l.reason,
            l.detail
        );
    }
    if out.is_empty() {
        out = "no dead letters\n".into();
    }
    out
}

/// One dead letter in full.
pub fn render_dead_letter(l: &proto::DeadLetter) -> String {
    let mut out = format!(
        "message {}\nreason: {}\ndetail: {}\ndead-lettered at: {}\n",
        l.message_id,
        l.reason,
        l.detail,
        rfc3339_micros(l.dead_at_unix_micros)
    );
    let Some(e) = &l.envelope else {
        return out + "envelope: unreadable (replay skips it; purge deletes it)\n";
    };
    let to = match &e.destination {
        Some(proto::envelope::Destination::User(u)) => format!("user {u}"),
        Some(proto::envelope::Destination::Group(g)) => format!("group {g}"),
        None => "nobody".into(),
    };
    out += &format!(
        "from: {} on gateway {}\nto: {to}\ncreated at: {}\nttl: {}\n",
        e.sender_user,
        e.sender_gateway,
        rfc3339_micros(e.created_at_unix_micros),
        match e.ttl_ms {
            0 => "none".to_string(),
            ms => format_duration(Duration::from_millis(u64::from(ms))).to_string(),
        }
    );
    for (k, v) in &e.headers {
        out += &format!("header {k}: {v}\n");
    }
    out + &format!(
        "payload ({} B): {}\n",
        e.payload.len(),
        String::from_utf8_lossy(&e.payload)
    )
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
            "auto-rollback: {}  window: {}  max error rate: {:.2}%  max p99: {:.1} ms  min samples: {}  max down: {}\n",
            if r.enabled { "on" } else { "off" },
            format_duration(Duration::from_millis(r.window_ms)),
            r.max_error_rate * 100.0,
            r.max_p99_ms,
            r.min_samples,
            format_duration(Duration::from_millis(r.max_down_ms))
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
            "last rollback: from {}% at {}: {}\n",
            r.from_share,
            format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(r.at_unix_secs)),
            r.reason
        ),
        None => "last rollback: none\n".into(),
    };
    out
}
