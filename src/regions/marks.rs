//! What changed and is still to be produced for the other regions (users
//! for presence, group members for membership), and the task that sends
//! it on.
//!
//! A mark names what changed, not how: the send reads the current state
//! when it runs, so marks coalesce and a retry always sends the latest.

use std::collections::HashSet;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Sends at once by the task.
const CONCURRENCY: usize = 64;
/// The longest wait between attempts at a failing send.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The marked keys, and the task's wake-up.
pub(super) struct Marks<K> {
    marked: Mutex<HashSet<K>>,
    wake: Notify,
}

impl<K> Default for Marks<K> {
    fn default() -> Self {
        Self {
            marked: Mutex::new(HashSet::new()),
            wake: Notify::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Marks<K> {
    /// Marks `key` to be sent.
    pub(super) fn mark(&self, key: K) {
        self.marked.lock().insert(key);
        self.wake.notify_one();
    }

    fn take(&self) -> Vec<K> {
        self.marked.lock().drain().collect()
    }
}

/// Sends every marked key with `send`, `CONCURRENCY` at once; a key whose
/// send failed is counted on `failed` (a counter, `outcome="failed"`),
/// marked again and retried with backoff. Abort the task to stop it.
pub(super) fn send_marked<K, F, Fut>(
    marks: Arc<Marks<K>>,
    failed: &'static str,
    send: F,
) -> tokio::task::JoinHandle<()>
where
    K: Hash + Eq + Clone + std::fmt::Display + Send + Sync + 'static,
    F: Fn(K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let send = Arc::new(send);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            let keys = marks.take();
            if keys.is_empty() {
                marks.wake.notified().await;
                continue;
            }
            let retry: Vec<K> = futures::stream::iter(keys)
                .map(|key| {
                    let send = send.clone();
                    async move {
                        match send(key.clone()).await {
                            Ok(()) => None,
                            Err(reason) => {
                                tracing::warn!(feed = failed, %key, reason, "not replicated; retrying");
                                Some(key)
                            }
                        }
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .filter_map(std::future::ready)
                .collect()
                .await;
            let any = !retry.is_empty();
            for key in retry {
                metrics::counter!(failed, "outcome" => "failed").increment(1);
                marks.mark(key);
            }
            if any {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            } else {
                backoff = Duration::from_millis(50);
            }
        }
    })
}
