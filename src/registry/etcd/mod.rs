//! The gateway registry on etcd v3 (`[registry] kind = "etcd"`, feature
//! `etcd`).
//!
//! Keys, under `{key_prefix}/`:
//!
//! - `gateways/{id}`: `region \x1f address`, attached to the gateway's lease
//!   of `lease_ttl`. Every heartbeat (`register`) keeps the lease alive; a
//!   gateway that stops loses it and etcd deletes the key.
//! - `reaped/{id}/{create_revision}`: the claim, created in a transaction
//!   only if absent, of the one node that cleans up after that registration
//!   ended (its sessions and group counts). `deregister` claims its own
//!   registration, so a gateway that leaves is not cleaned up after (as on
//!   Redis). Claims sit on a lease of their own and go after `CLAIM_TTL` (10 minutes).
//!
//! Each node keeps a view of every registration: one range read, then a
//! watch from the revision after it. `get`, `list` and so the ring are
//! answered from the view without a round trip; a registration appears or
//! leaves on every node as soon as its watch event arrives. A watch that
//! breaks (etcd restarted, history compacted) reads the range again and
//! watches on from there; a registration that ended in the gap is cleaned
//! up then.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, KeyValue, PutOptions, Txn, TxnOp};
use parking_lot::RwLock;
use tokio::task::JoinHandle;

mod watch;

use watch::{follow, load, Follower};

use super::{decode, encode, EtcdConfig, Registry, STORE};
use crate::cause::Cause;
use crate::error::StoreError;
use crate::groups::Directory;
use crate::stored;
use crate::topology::{GatewayId, GatewayInfo};

/// Seconds a cleanup claim is kept: far longer than any node takes to see
/// the registration's end, so no second node cleans up after it.
const CLAIM_TTL: i64 = 600;
/// Pause before a broken watch reads the range again.
const RETRY: Duration = Duration::from_millis(500);
/// HTTP/2 pings on an idle connection, so a watch on a connection that died
/// without a reset (a partition) breaks, and is re-established, instead of
/// waiting for events forever. etcd refuses pings more often than every 5 s
/// (`--grpc-keepalive-min-time`).
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Live gateways on etcd, with a view kept by a watch.
pub struct EtcdRegistry {
    client: Client,
    keys: Keys,
    lease_ttl: i64,
    view: Arc<RwLock<View>>,
    /// The lease each gateway of this process registered with, and what it
    /// put (a heartbeat with nothing new only keeps the lease alive).
    leases: tokio::sync::Mutex<HashMap<GatewayId, Held>>,
    /// Set by [`EtcdRegistry::clean_up_with`]; until then nothing is cleaned.
    directory: Arc<OnceLock<Directory>>,
    follower: JoinHandle<()>,
}

struct Held {
    lease: i64,
    info: GatewayInfo,
}

#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn gateways(&self) -> String {
        format!("{}/gateways/", self.prefix)
    }

    fn gateway(&self, id: &GatewayId) -> String {
        format!("{}/gateways/{id}", self.prefix)
    }

    fn claim(&self, id: &GatewayId, created: i64) -> String {
        format!("{}/reaped/{id}/{created}", self.prefix)
    }

    /// The gateway a registration key names.
    fn id(&self, key: &[u8]) -> Option<GatewayId> {
        let key = std::str::from_utf8(key).ok()?;
        let id = key.strip_prefix(&self.gateways())?;
        stored::id(super::STORE, id)
    }
}

/// Every registration this node knows of, with the revision it last
/// changed at, so a watch event older than a local write is not applied
/// over it. Ended registrations stay as tombstones (one per gateway id).
#[derive(Default)]
struct View {
    entries: BTreeMap<GatewayId, Entry>,
}

struct Entry {
    /// `None`: ended.
    info: Option<GatewayInfo>,
    revision: i64,
    /// The registration's create revision (names its cleanup claim).
    created: i64,
}

impl View {
    fn apply(&mut self, id: GatewayId, info: Option<GatewayInfo>, revision: i64, created: i64) {
        match self.entries.get_mut(&id) {
            Some(entry) if entry.revision >= revision => {}
            Some(entry) => {
                entry.info = info;
                entry.revision = revision;
                if created > 0 {
                    entry.created = created;
                }
            }
            None => {
                self.entries.insert(
                    id,
                    Entry {
                        info,
                        revision,
                        created,
                    },
                );
            }
        }
    }

    fn get(&self, id: &GatewayId) -> Option<&Entry> {
        self.entries.get(id).filter(|e| e.info.is_some())
    }

    /// Replaces the view with a full read at `revision`; returns the
    /// registrations that were live and are gone (ended while unwatched).
    fn reset(
        &mut self,
        live: Vec<(GatewayInfo, i64, i64)>,
        revision: i64,
    ) -> Vec<(GatewayId, i64)> {
        let mut ended: BTreeMap<GatewayId, i64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.info.is_some())
            .map(|(id, e)| (id.clone(), e.created))
            .collect();
        for entry in self.entries.values_mut() {
            entry.info = None;
            entry.revision = revision;
        }
        for (info, modified, created) in live {
            ended.remove(&info.id);
            let entry = self.entries.entry(info.id.clone()).or_insert(Entry {
                info: None,
                revision: 0,
                created,
            });
            entry.info = Some(info);
            entry.revision = modified;
            entry.created = created;
        }
        ended.into_iter().collect()
    }
}

fn failed(operation: String) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |e| StoreError::Backend {
        store: STORE,
        operation,
        reason: Cause::new(e),
    }
}

impl EtcdRegistry {
    /// Connects, reads every registration and follows changes from there.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let unavailable = |e: etcd_client::Error| StoreError::Unavailable {
            store: STORE,
            address: config.endpoints.join(","),
            reason: Cause::new(e),
        };
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(KEEP_ALIVE, config.request_timeout)
            .with_keep_alive_while_idle(true);
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        let keys = Keys {
            prefix: config.key_prefix.clone(),
        };
        let view = Arc::new(RwLock::new(View::default()));
        let (live, revision) = load(&client, &keys).await.map_err(unavailable)?;
        view.write().reset(live, revision);
        let directory = Arc::new(OnceLock::new());
        let follower = tokio::spawn(follow(
            Follower {
                client: client.clone(),
                keys: keys.clone(),
                view: view.clone(),
                directory: directory.clone(),
            },
            revision,
        ));
        Ok(Self {
            client,
            keys,
            // Validated to be whole seconds within `registry.lease_ttl`'s range.
            lease_ttl: config.lease_ttl.as_secs() as i64,
            view,
            leases: tokio::sync::Mutex::new(HashMap::new()),
            directory,
            follower,
        })
    }

    /// From now on, the sessions and group counts of a gateway whose lease
    /// expires are removed through `directory` (by exactly one node).
    pub fn clean_up_with(&self, directory: Directory) {
        // Set once per registry: Backends builds one directory.
        let _ = self.directory.set(directory);
    }

    async fn grant(&self, ttl: i64, what: String) -> Result<i64, StoreError> {
        let granted = self
            .client
            .clone()
            .lease_grant(ttl, None)
            .await
            .map_err(failed(what))?;
        Ok(granted.id())
    }
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// Puts `claim` on `lease`, and does `and`, if nobody holds the claim (and
/// `also` holds); whether it did, and the revision it did it at.
async fn claim_txn(
    client: &mut Client,
    claim: &str,
    lease: i64,
    also: Option<Compare>,
    mut and: Vec<TxnOp>,
) -> Result<(bool, i64), etcd_client::Error> {
    and.push(TxnOp::put(
        claim,
        "",
        Some(PutOptions::new().with_lease(lease)),
    ));
    let mut when = vec![Compare::create_revision(claim, CompareOp::Equal, 0)];
    when.extend(also);
    let done = client.txn(Txn::new().when(when).and_then(and)).await?;
    Ok((done.succeeded(), done.header().map_or(0, |h| h.revision())))
}

#[async_trait]
impl Registry for EtcdRegistry {
    async fn register(&self, gateway: &GatewayInfo) -> Result<(), StoreError> {
        let mut leases = self.leases.lock().await;
        let id = &gateway.id;
        let mut lease = None;
        if let Some(held) = leases.get(id) {
            match self.client.clone().lease_keep_alive(held.lease).await {
                Ok(_) => {
                    let listed = self.view.read().get(id).is_some();
                    if held.info == *gateway && listed {
                        return Ok(());
                    }
                    lease = Some(held.lease);
                }
                // Expired: the gateway left the ring; it re-joins below.
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => {}
                Err(err) => return Err(failed(format!("keep gateway {id} alive"))(err)),
            }
        }
        let lease = match lease {
            Some(lease) => lease,
            None => {
                self.grant(self.lease_ttl, format!("lease gateway {id}"))
                    .await?
            }
        };
        let put = self
            .client
            .clone()
            .put(
                self.keys.gateway(id),
                encode(gateway),
                Some(PutOptions::new().with_lease(lease).with_prev_key()),
            )
            .await
            .map_err(failed(format!("register gateway {id}")))?;
        let revision = put.header().map_or(0, |h| h.revision());
        let created = put.prev_key().map_or(revision, KeyValue::create_revision);
        self.view
            .write()
            .apply(id.clone(), Some(gateway.clone()), revision, created);
        leases.insert(
            id.clone(),
            Held {
                lease,
                info: gateway.clone(),
            },
        );
        Ok(())
    }

    async fn deregister(&self, gateway: &GatewayId) -> Result<(), StoreError> {
        let held = self.leases.lock().await.remove(gateway);
        let key = self.keys.gateway(gateway);
        let mut client = self.client.clone();
        let read = client
            .get(key.as_str(), None)
            .await
            .map_err(failed(format!("read gateway {gateway}")))?;
        if let Some(kv) = read.kvs().first() {
            let created = kv.create_revision();
            let lease = self
                .grant(
                    CLAIM_TTL,
                    format!("lease the claim of leaving gateway {gateway}"),
                )
                .await?;
            let claim = self.keys.claim(gateway, created);
            // Only this registration: not one that replaced it meanwhile.
            let same = Compare::create_revision(key.as_str(), CompareOp::Equal, created);
            let delete = vec![TxnOp::delete(key.as_str(), None)];
            let (deleted, revision) = claim_txn(&mut client, &claim, lease, Some(same), delete)
                .await
                .map_err(failed(format!("deregister gateway {gateway}")))?;
            if deleted {
                self.view
                    .write()
                    .apply(gateway.clone(), None, revision, created);
            }
        }
        if let Some(held) = held {
            // The key is gone already; the lease would only expire later.
            if let Err(err) = client.lease_revoke(held.lease).await {
                tracing::debug!(%gateway, %err, "cannot revoke the lease of a leaving gateway");
            }
        }
        Ok(())
    }

    async fn get(&self, gateway: &GatewayId) -> Result<Option<GatewayInfo>, StoreError> {
        Ok(self.view.read().get(gateway).and_then(|e| e.info.clone()))
    }

    async fn list(&self) -> Result<Vec<GatewayInfo>, StoreError> {
        let view = self.view.read();
        Ok(view
            .entries
            .values()
            .filter_map(|e| e.info.clone())
            .collect())
    }
}
