//! Presence watches: a gateway names users (its users' friends, a group's
//! members) and hears when they come online, go offline, or add or drop a
//! device. Built on the change events every presence store publishes:
//! changed users are collected for [`COALESCE`], looked up once in the
//! store (not the cache, which follows the same events and may not have
//! dropped the entry yet), and compared with what was last reported, so a
//! device that flaps within the window costs one lookup and may cost no
//! event at all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError};

use super::cache::CachedPresence;
use super::{PresenceStore, Session};
use crate::changes::Changed;
use crate::error::StoreError;
use crate::topology::{DeviceId, GatewayId, UserId};

/// How long changes are collected before they are looked up and reported.
pub const COALESCE: Duration = Duration::from_millis(50);

/// What changed for a watched user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The state when the watch started (or after missed events).
    Snapshot,
    /// The user's first session appeared.
    Online,
    /// The user's last session went away.
    Offline,
    /// Online already; another device connected.
    DeviceAdded(DeviceId),
    /// Still online; one device disconnected.
    DeviceRemoved(DeviceId),
}

/// One event of a watch, with the user's sessions after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    /// The watched user.
    pub user: UserId,
    /// What changed.
    pub change: Change,
    /// Every live session of the user now.
    pub sessions: Vec<Session>,
}

/// A watch would grow past its bound.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("a watch holds at most {max} users; {wanted} were asked for")]
pub struct TooManyWatched {
    /// The bound.
    pub max: usize,
    /// The size the watch would have had.
    pub wanted: usize,
}

/// What a watch knows of a user: the sessions by device (and gateway, so a
/// device that moved gateways is reported as removed and added).
type Known = BTreeMap<(DeviceId, GatewayId), Session>;

/// The watch of one gateway.
pub struct PresenceWatch {
    presence: Arc<CachedPresence>,
    changes: broadcast::Receiver<Changed<UserId>>,
    known: HashMap<UserId, Known>,
    dirty: HashSet<UserId>,
    max: usize,
}

impl PresenceWatch {
    /// A watch of nobody yet, following `presence`'s change events from
    /// now on; it holds at most `max` users.
    pub fn new(presence: Arc<CachedPresence>, max: usize) -> Self {
        let changes = presence.changes();
        Self {
            presence,
            changes,
            known: HashMap::new(),
            dirty: HashSet::new(),
            max,
        }
    }

    /// Users watched now.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether nobody is watched.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Starts watching `users`; returns a [`Change::Snapshot`] of each one
    /// not watched before.
    pub async fn add(&mut self, users: &[UserId]) -> Result<Vec<PresenceEvent>, WatchError> {
        let new: Vec<UserId> = users
            .iter()
            .filter(|u| !self.known.contains_key(*u))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let wanted = self.known.len() + new.len();
        if wanted > self.max {
            return Err(WatchError::TooMany(TooManyWatched {
                max: self.max,
                wanted,
            }));
        }
        let found = self.presence.locate_many_uncached(&new).await?;
        Ok(new
            .into_iter()
            .zip(found)
            .map(|(user, sessions)| {
                self.known.insert(user.clone(), known(&sessions));
                PresenceEvent {
                    user,
                    change: Change::Snapshot,
                    sessions,
                }
            })
            .collect())
    }

    /// Stops watching `users`.
    pub fn remove(&mut self, users: &[UserId]) {
        for user in users {
            self.known.remove(user);
            self.dirty.remove(user);
        }
    }

    /// Waits until a watched user changed, collects further changes for
    /// [`COALESCE`], and returns what changed (never empty). `None` when
    /// the store's change feed closed.
    pub async fn next(&mut self) -> Option<Result<Vec<PresenceEvent>, StoreError>> {
        loop {
            if self.dirty.is_empty() {
                let event = self.changes.recv().await;
                if !self.take(event) {
                    return None;
                }
                continue;
            }
            let until = tokio::time::Instant::now() + COALESCE;
            while let Ok(event) = tokio::time::timeout_at(until, self.changes.recv()).await {
                if !self.take(event) {
                    return None;
                }
            }
            let users: Vec<UserId> = self.dirty.drain().collect();
            let found = match self.presence.locate_many_uncached(&users).await {
                Ok(found) => found,
                Err(err) => {
                    // Looked up again with the next change (or the next call).
                    self.dirty.extend(users);
                    return Some(Err(err));
                }
            };
            let events: Vec<PresenceEvent> = users
                .into_iter()
                .zip(found)
                .flat_map(|(user, sessions)| self.compare(user, sessions))
                .collect();
            if !events.is_empty() {
                return Some(Ok(events));
            }
        }
    }

    /// Marks the user of a change event dirty; after missed events (a gap
    /// in the feed, or this watch lagging) every watched user is. False when the feed closed.
    fn take(&mut self, event: Result<Changed<UserId>, RecvError>) -> bool {
        match event {
            Ok(Changed::Key(user)) => {
                if self.known.contains_key(&user) {
                    self.dirty.insert(user);
                }
                true
            }
            Ok(Changed::All) | Err(RecvError::Lagged(_)) => {
                tracing::debug!("presence watch missed events; looking everyone up again");
                self.dirty.extend(self.known.keys().cloned());
                true
            }
            Err(RecvError::Closed) => false,
        }
    }

    /// The events that take `user` from what was reported to `sessions`.
    fn compare(&mut self, user: UserId, sessions: Vec<Session>) -> Vec<PresenceEvent> {
        let Some(before) = self.known.get_mut(&user) else {
            return Vec::new();
        };
        let after = known(&sessions);
        let changes: Vec<Change> = match (before.is_empty(), after.is_empty()) {
            (true, true) => Vec::new(),
            (true, false) => vec![Change::Online],
            (false, true) => vec![Change::Offline],
            (false, false) => {
                let added = after
                    .keys()
                    .filter(|k| !before.contains_key(*k))
                    .map(|(device, _)| Change::DeviceAdded(device.clone()));
                let removed = before
                    .keys()
                    .filter(|k| !after.contains_key(*k))
                    .map(|(device, _)| Change::DeviceRemoved(device.clone()));
                added.chain(removed).collect()
            }
        };
        *before = after;
        changes
            .into_iter()
            .map(|change| PresenceEvent {
                user: user.clone(),
                change,
                sessions: sessions.clone(),
            })
            .collect()
    }
}

fn known(sessions: &[Session]) -> Known {
    sessions
        .iter()
        .map(|s| ((s.device.clone(), s.gateway.clone()), s.clone()))
        .collect()
}

/// Why a watch could not be changed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WatchError {
    /// Over the bound.
    #[error(transparent)]
    TooMany(#[from] TooManyWatched),
    /// The presence store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::memory::MemoryPresence;
    use crate::presence::PresenceConfig;

    fn session(user: &'static str, device: &'static str) -> Session {
        Session {
            user: user.into(),
            device: device.into(),
            gateway: "gw-1".into(),
            region: "eu".into(),
            since_micros: 1,
        }
    }

    async fn next(watch: &mut PresenceWatch) -> Vec<(String, Change)> {
        tokio::time::timeout(Duration::from_secs(2), watch.next())
            .await
            .expect("an event within 2 s")
            .expect("feed open")
            .expect("store ok")
            .into_iter()
            .map(|e| (e.user.to_string(), e.change))
            .collect()
    }

    #[tokio::test]
    async fn a_watch_reports_each_change_of_the_users_it_names_and_only_theirs() {
        let store: Arc<dyn PresenceStore> = Arc::new(MemoryPresence::new(Duration::from_secs(60)));
        let presence = Arc::new(CachedPresence::new(store, &PresenceConfig::default()));
        presence.online(session("ann", "phone")).await.unwrap();
        let mut watch = PresenceWatch::new(presence.clone(), 10);
        let snapshot = watch.add(&["ann".into(), "bob".into()]).await.unwrap();
        let mut online: Vec<(String, usize)> = snapshot
            .iter()
            .map(|e| (e.user.to_string(), e.sessions.len()))
            .collect();
        online.sort();
        assert_eq!(online, [("ann".into(), 1), ("bob".into(), 0)]);

        presence.online(session("eve", "phone")).await.unwrap(); // not watched
        presence.online(session("bob", "phone")).await.unwrap();
        assert_eq!(next(&mut watch).await, [("bob".into(), Change::Online)]);
        presence.online(session("bob", "laptop")).await.unwrap();
        assert_eq!(
            next(&mut watch).await,
            [("bob".into(), Change::DeviceAdded("laptop".into()))]
        );
        presence
            .offline(&"bob".into(), &"phone".into())
            .await
            .unwrap();
        assert_eq!(
            next(&mut watch).await,
            [("bob".into(), Change::DeviceRemoved("phone".into()))]
        );
        presence
            .offline(&"bob".into(), &"laptop".into())
            .await
            .unwrap();
        assert_eq!(next(&mut watch).await, [("bob".into(), Change::Offline)]);

        // A device that flaps within the window: one lookup, no event.
        presence
            .offline(&"ann".into(), &"phone".into())
            .await
            .unwrap();
        presence.online(session("ann", "phone")).await.unwrap();
        presence.online(session("bob", "phone")).await.unwrap();
        assert_eq!(next(&mut watch).await, [("bob".into(), Change::Online)]);

        let err = watch
            .add(
                &(0..10)
                    .map(|i| UserId::try_from(format!("u{i}")).unwrap())
                    .collect::<Vec<_>>(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                WatchError::TooMany(TooManyWatched {
                    max: 10,
                    wanted: 12
                })
            ),
            "{err:?}"
        );
    }
}
