//! In-process presence: the embedded default and single-node deployments.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{PresenceStore, Session};
use crate::changes::Changed;
use crate::error::StoreError;
use crate::topology::{DeviceId, GatewayId, UserId};

#[derive(Default)]
struct State {
    sessions: HashMap<UserId, Vec<(Session, Instant)>>,
    by_gateway: HashMap<GatewayId, HashSet<UserId>>,
}

impl State {
    /// Drops a user's expired sessions.
    fn expire(&mut self, user: &UserId, now: Instant) {
        if let Some(list) = self.sessions.get_mut(user) {
            list.retain(|(_, expires)| *expires > now);
            if list.is_empty() {
                self.sessions.remove(user);
            }
        }
    }

    fn on_gateway(&self, user: &UserId, gateway: &GatewayId) -> bool {
        self.sessions
            .get(user)
            .is_some_and(|l| l.iter().any(|(s, _)| &s.gateway == gateway))
    }
}

/// Sessions in a map, expired lazily on read.
pub struct MemoryPresence {
    ttl: Duration,
    state: Mutex<State>,
    changes: broadcast::Sender<Changed<UserId>>,
}

impl MemoryPresence {
    /// An empty store whose sessions live `ttl` past their last refresh.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            state: Mutex::default(),
            changes: crate::changes::local(),
        }
    }

    fn changed(&self, user: &UserId) {
        // No receiver is fine: nobody caches.
        let _ = self.changes.send(Changed::Key(user.clone()));
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn online(&self, session: Session) -> Result<bool, StoreError> {
        let now = Instant::now();
        let user = session.user.clone();
        let first = {
            let mut state = self.state.lock();
            state.expire(&user, now);
            let first = !state.on_gateway(&user, &session.gateway);
            state
                .by_gateway
                .entry(session.gateway.clone())
                .or_default()
                .insert(user.clone());
            let list = state.sessions.entry(user.clone()).or_default();
            list.retain(|(s, _)| s.device != session.device);
            list.push((session, now + self.ttl));
            first
        };
        self.changed(&user);
        Ok(first)
    }

    async fn offline(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Option<(Session, bool)>, StoreError> {
        let removed = {
            let mut state = self.state.lock();
            state.expire(user, Instant::now());
            let Some(list) = state.sessions.get_mut(user) else {
                return Ok(None);
            };
            let Some(pos) = list.iter().position(|(s, _)| &s.device == device) else {
                return Ok(None);
            };
            let (session, _) = list.remove(pos);
            if list.is_empty() {
                state.sessions.remove(user);
            }
            let last = !state.on_gateway(user, &session.gateway);
            if last {
                if let Some(users) = state.by_gateway.get_mut(&session.gateway) {
                    users.remove(user);
                }
            }
            (session, last)
        };
        self.changed(user);
        Ok(Some(removed))
    }

    async fn locate(&self, user: &UserId) -> Result<Vec<Session>, StoreError> {
        let mut state = self.state.lock();
        state.expire(user, Instant::now());
        Ok(state
            .sessions
            .get(user)
            .map(|l| l.iter().map(|(s, _)| s.clone()).collect())
            .unwrap_or_default())
    }

    async fn refresh(&self, gateway: &GatewayId) -> Result<(), StoreError> {
        let expires = Instant::now() + self.ttl;
        let mut state = self.state.lock();
        let users: Vec<UserId> = state
            .by_gateway
            .get(gateway)
            .map(|u| u.iter().cloned().collect())
            .unwrap_or_default();
        for user in users {
            if let Some(list) = state.sessions.get_mut(&user) {
                for (session, exp) in list.iter_mut() {
                    if &session.gateway == gateway {
                        *exp = expires;
                    }
                }
            }
        }
        Ok(())
    }

    async fn remove_gateway(&self, gateway: &GatewayId) -> Result<Vec<Session>, StoreError> {
        let mut removed = Vec::new();
        {
            let mut state = self.state.lock();
            let users = state.by_gateway.remove(gateway).unwrap_or_default();
            for user in users {
                if let Some(list) = state.sessions.get_mut(&user) {
                    list.retain(|(s, _)| {
                        let gone = &s.gateway == gateway;
                        if gone {
                            removed.push(s.clone());
                        }
                        !gone
                    });
                    if list.is_empty() {
                        state.sessions.remove(&user);
                    }
                }
            }
        }
        for session in &removed {
            self.changed(&session.user);
        }
        Ok(removed)
    }

    async fn hosted_users(&self, gateway: &GatewayId) -> Result<u64, StoreError> {
        let mut state = self.state.lock();
        let users: Vec<UserId> = state
            .by_gateway
            .get(gateway)
            .map(|users| users.iter().cloned().collect())
            .unwrap_or_default();
        let now = Instant::now();
        let mut live = 0;
        for user in &users {
            state.expire(user, now);
            live += u64::from(state.on_gateway(user, gateway));
        }
        Ok(live)
    }

    fn changes(&self) -> broadcast::Receiver<Changed<UserId>> {
        self.changes.subscribe()
    }
}
