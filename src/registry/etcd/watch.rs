//! Each node's view of the registrations: one range read, then a watch
//! from the revision after it, read again whenever the watch breaks.

use std::sync::{Arc, OnceLock};

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use parking_lot::RwLock;

use super::{claim_txn, decode, failed, Keys, View, CLAIM_TTL, RETRY};
use crate::cause::Report;
use crate::error::StoreError;
use crate::groups::Directory;
use crate::topology::{GatewayId, GatewayInfo};

/// Every registration under the prefix, and the revision of the read.
pub(super) async fn load(
    client: &Client,
    keys: &Keys,
) -> Result<(Vec<(GatewayInfo, i64, i64)>, i64), etcd_client::Error> {
    let read = client
        .clone()
        .get(keys.gateways(), Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = read.header().map_or(0, |h| h.revision());
    let live = read
        .kvs()
        .iter()
        .filter_map(|kv| {
            Some((
                registration(keys, kv)?,
                kv.mod_revision(),
                kv.create_revision(),
            ))
        })
        .collect();
    Ok((live, revision))
}

/// A stored registration; one that does not decode is skipped and logged.
fn registration(keys: &Keys, kv: &KeyValue) -> Option<GatewayInfo> {
    let id = keys.id(kv.key())?;
    let decoded = std::str::from_utf8(kv.value())
        .map_err(|e| e.to_string())
        .and_then(|value| decode(&id, value).map_err(|e| Report(&e).to_string()));
    match decoded {
        Ok(info) => Some(info),
        Err(err) => {
            tracing::warn!(gateway = %id, %err, "skipping a registration that does not decode");
            None
        }
    }
}

/// What the watch task needs.
#[derive(Clone)]
pub(super) struct Follower {
    pub(super) client: Client,
    pub(super) keys: Keys,
    pub(super) view: Arc<RwLock<View>>,
    pub(super) directory: Arc<OnceLock<Directory>>,
}

/// Follows changes after `revision` for as long as the registry lives.
pub(super) async fn follow(follower: Follower, mut revision: i64) {
    loop {
        let err = follower.watch(revision).await;
        tracing::warn!(%err, "etcd registry watch ended; reading the registrations again");
        loop {
            tokio::time::sleep(RETRY).await;
            match load(&follower.client, &follower.keys).await {
                Ok((live, at)) => {
                    let ended = follower.view.write().reset(live, at);
                    for (id, created) in ended {
                        follower.ended(id, created);
                    }
                    revision = at;
                    break;
                }
                Err(err) => tracing::warn!(%err, "cannot read the etcd registrations"),
            }
        }
    }
}

impl Follower {
    /// Applies every change after `revision` until the watch breaks.
    async fn watch(&self, revision: i64) -> etcd_client::Error {
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(revision + 1);
        let mut stream = match self
            .client
            .clone()
            .watch(self.keys.gateways(), Some(options))
            .await
        {
            Ok(stream) => stream,
            Err(err) => return err,
        };
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return etcd_client::Error::WatchError("stream closed".into()),
                Err(err) => return err,
            };
            if response.canceled() || response.compact_revision() > 0 {
                return etcd_client::Error::WatchError(format!(
                    "canceled ({}), compacted at {}",
                    response.cancel_reason(),
                    response.compact_revision()
                ));
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => {
                        if let Some(info) = registration(&self.keys, kv) {
                            let id = info.id.clone();
                            self.view.write().apply(
                                id,
                                Some(info),
                                kv.mod_revision(),
                                kv.create_revision(),
                            );
                        }
                    }
                    EventType::Delete => {
                        let Some(id) = self.keys.id(kv.key()) else {
                            continue;
                        };
                        let created = event.prev_kv().map(KeyValue::create_revision);
                        let mut view = self.view.write();
                        let created = created
                            .or_else(|| view.get(&id).map(|e| e.created))
                            .unwrap_or(0);
                        view.apply(id.clone(), None, kv.mod_revision(), created);
                        drop(view);
                        self.ended(id, created);
                    }
                }
            }
        }
    }

    /// A registration ended: the node that claims it removes the gateway's
    /// sessions and group counts, in the background (the watch goes on).
    fn ended(&self, id: GatewayId, created: i64) {
        let Some(directory) = self.directory.get().cloned() else {
            return;
        };
        let follower = self.clone();
        tokio::spawn(async move {
            // Restarted meanwhile: the sessions are the new registration's.
            if follower.view.read().get(&id).is_some() {
                return;
            }
            match follower.claim(&id, created).await {
                Ok(false) => {}
                Ok(true) => match directory.remove_gateway(&id).await {
                    Ok(sessions) => {
                        tracing::warn!(gateway = %id, sessions, "gateway lease expired: sessions removed")
                    }
                    Err(err) => {
                        tracing::error!(gateway = %id, err = %Report(&err), "cannot clean up dead gateway")
                    }
                },
                Err(err) => {
                    tracing::warn!(gateway = %id, err = %Report(&err), "cannot claim dead gateway")
                }
            }
        });
    }

    /// Creates the cleanup claim of registration `created` of `id`; false
    /// if another node (or the leaving gateway) holds it.
    async fn claim(&self, id: &GatewayId, created: i64) -> Result<bool, StoreError> {
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(CLAIM_TTL, None)
            .await
            .map_err(failed(format!("lease a claim on dead gateway {id}")))?
            .id();
        let claim = self.keys.claim(id, created);
        let (claimed, _) = claim_txn(&mut client, &claim, lease, None, Vec::new())
            .await
            .map_err(failed(format!("claim dead gateway {id}")))?;
        Ok(claimed)
    }
}
