//! Live config: the Admin reload RPC, a watch on the config file and SIGHUP
//! all come here. The new config is loaded and validated in full first; only
//! then are the parts that can change while running swapped in (routing
//! rules, hot-pair thresholds, tokens). An invalid config changes nothing.
//! Changed sections that only take effect on restart are reported by key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::auth::Tokens;
use super::{Shared, SidecarError};
use crate::cause::Report;
use crate::config::{ConfigError, Problem, Settings};
use crate::telemetry;
use crate::transport::grpc::PeerLinks;

/// Editors save in bursts (truncate, write, rename): one reload per burst.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// True when the new config is in force.
    pub applied: bool,
    /// Why it was refused.
    pub problems: Vec<Problem>,
    /// Changed keys that need a restart to take effect.
    pub restart_required: Vec<String>,
}

/// Loads, validates and applies the config file (and environment).
pub(crate) async fn reload(shared: &Shared) -> ReloadReport {
    let report = apply(shared).await;
    let result = if report.applied {
        "applied"
    } else {
        "rejected"
    };
    metrics::counter!(telemetry::CONFIG_RELOADS, "result" => result).increment(1);
    if report.applied {
        tracing::info!(restart_required = ?report.restart_required, "config reloaded");
    } else {
        let problems: Vec<String> = report.problems.iter().map(Problem::to_string).collect();
        tracing::warn!(
            ?problems,
            "config reload refused; the old config stays in force"
        );
    }
    report
}

async fn apply(shared: &Shared) -> ReloadReport {
    let refused = |problems| ReloadReport {
        applied: false,
        problems,
        restart_required: Vec::new(),
    };
    let new = match Settings::load(shared.config_path.as_deref()) {
        Ok(new) => new,
        Err(ConfigError::Invalid(problems)) => return refused(problems),
        Err(err @ ConfigError::Load(_)) => {
            return refused(vec![Problem {
                key: String::new(),
                reason: Report(&err).to_string(),
            }])
        }
    };
    let policy = match new.policy() {
        Ok(policy) => policy,
        Err(problems) => return refused(problems),
    };
    let tokens = match Tokens::resolve(&new.sidecar) {
        Ok(tokens) => tokens,
        Err(SidecarError::Secret { key, from, reason }) => {
            return refused(vec![Problem {
                key,
                reason: format!("cannot read the secret from {from}: {}", Report(&reason)),
            }])
        }
        Err(err) => {
            return refused(vec![Problem {
                key: "sidecar".into(),
                reason: Report(&err).to_string(),
            }])
        }
    };

    let old = shared.settings.load_full();
    let restart_required = restart_only_changes(&old, &new);
    // Everything is valid: swap. Restart-only sections stay as started, so
    // the Admin API shows what is in force.
    let mut effective = (*old).clone();
    effective.routing = new.routing;
    effective.canary = new.canary;
    effective.sidecar.tokens = new.sidecar.tokens;
    effective.sidecar.admin_token = new.sidecar.admin_token;
    effective.sidecar.peer_token = new.sidecar.peer_token;
    shared.policy.store(policy);
    shared
        .backends
        .hot_pairs
        .configure(effective.routing.hot_pairs.clone());
    if let Some(PeerLinks(links)) = shared.backends.extension() {
        links.set_peer_token(tokens.peer.clone());
    }
    shared.auth.replace(tokens);
    shared.settings.store(Arc::new(effective));
    ReloadReport {
        applied: true,
        problems: Vec::new(),
        restart_required,
    }
}

/// Keys whose change is not applied while running.
fn restart_only_changes(old: &Settings, new: &Settings) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |key: &str, differs: bool| {
        if differs {
            changed.push(key.to_owned());
        }
    };
    // Debug output stands in for equality: most sections do not derive it.
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    check("sidecar.listen", old.sidecar.listen != new.sidecar.listen);
    check(
        "sidecar.advertise",
        old.sidecar.advertise != new.sidecar.advertise,
    );
    check(
        "sidecar.drain_timeout",
        old.sidecar.drain_timeout != new.sidecar.drain_timeout,
    );
    check("telemetry.listen", old.telemetry != new.telemetry);
    check("store", differs(&old.store, &new.store));
    check("transports", differs(&old.transports, &new.transports));
    check("limits", differs(&old.limits, &new.limits));
    check("presence", differs(&old.presence, &new.presence));
    check("offline", differs(&old.offline, &new.offline));
    check("delivery", differs(&old.delivery, &new.delivery));
    changed
}

/// Watches the config file's directory (editors replace files by rename) and
/// reloads after each burst of changes to the file.
pub(crate) fn watch_file(
    shared: Arc<Shared>,
    path: PathBuf,
) -> Result<notify::RecommendedWatcher, SidecarError> {
    let watch_error = |reason: notify::Error| SidecarError::Watch {
        path: path.clone(),
        reason,
    };
    let name = path.file_name().map(|n| n.to_owned());
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let touches_file = event.is_ok_and(|e| {
            !e.kind.is_access() && e.paths.iter().any(|p| p.file_name() == name.as_deref())
        });
        if touches_file {
            // The receiver ends with the sidecar.
            let _ = tx.send(());
        }
    })
    .map_err(watch_error)?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(watch_error)?;
    let mut stopping = shared.stopping.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                event = rx.recv() => if event.is_none() { break },
                _ = stopping.wait_for(|stop| *stop) => break,
            }
            // Collapse the burst.
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            tracing::info!("config file changed");
            reload(&shared).await;
        }
    });
    Ok(watcher)
}

/// SIGHUP, hooked now (before the sidecar says it is serving, so an early
/// SIGHUP reloads instead of killing the process); `None` elsewhere or when
/// the signal cannot be hooked.
pub(crate) struct Hangups(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangups {
    pub(crate) fn hook() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(hangups) => Self(Some(hangups)),
                Err(err) => {
                    tracing::warn!(%err, "cannot listen for SIGHUP; reload with the Admin API");
                    Self(None)
                }
            }
        }
        #[cfg(not(unix))]
        Self()
    }

    /// Reloads on every SIGHUP.
    pub(crate) fn reload_on_each(self, shared: Arc<Shared>) -> Option<JoinHandle<()>> {
        #[cfg(unix)]
        {
            let mut hangups = self.0?;
            Some(tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading config");
                    reload(&shared).await;
                }
            }))
        }
        #[cfg(not(unix))]
        {
            let _ = shared;
            None
        }
    }
}
