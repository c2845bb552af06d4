//! In-process offline queues.

use std::collections::{HashMap, HashSet, VecDeque};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{DeadLetter, DeadLetterReason, Letters, OfflineConfig, OfflineStore};
use crate::envelope::{now_micros, Envelope, MessageId};
use crate::error::StoreError;
use crate::telemetry;
use crate::topology::{GatewayId, UserId};

/// One deque per user.
pub struct MemoryOffline {
    config: OfflineConfig,
    queues: Mutex<HashMap<UserId, VecDeque<Envelope>>>,
    dead: Mutex<DeadLetters>,
    flagged: Mutex<HashMap<GatewayId, HashSet<UserId>>>,
}

/// Failure counts of stored messages, and what was given up on.
#[derive(Default)]
struct DeadLetters {
    failures: HashMap<(UserId, MessageId), u32>,
    queues: HashMap<UserId, VecDeque<DeadLetter>>,
}

impl MemoryOffline {
    /// Empty queues with the given bounds.
    pub fn new(config: OfflineConfig) -> Self {
        // The depth gauge is shown (at 0) before the first message.
        metrics::gauge!(telemetry::OFFLINE_MESSAGES).increment(0.0);
        Self {
            config,
            queues: Mutex::default(),
            dead: Mutex::default(),
            flagged: Mutex::default(),
        }
    }

    fn trim(&self, queue: &mut VecDeque<Envelope>) -> usize {
        let oldest = now_micros() - self.config.max_age.as_micros() as i64;
        let before = queue.len();
        while queue
            .front()
            .is_some_and(|e| e.created_at_micros < oldest || queue.len() > self.config.max_per_user)
        {
            queue.pop_front();
        }
        let trimmed = before - queue.len();
        metrics::gauge!(telemetry::OFFLINE_MESSAGES).decrement(trimmed as f64);
        trimmed
    }
}

#[async_trait]
impl OfflineStore for MemoryOffline {
    async fn append(&self, user: &UserId, envelope: &Envelope) -> Result<(), StoreError> {
        let mut queues = self.queues.lock();
        let queue = queues.entry(user.clone()).or_default();
        queue.push_back(envelope.clone());
        metrics::gauge!(telemetry::OFFLINE_MESSAGES).increment(1.0);
        let trimmed = self.trim(queue);
        if trimmed > 0 {
            // Counted, not logged at warn: a user far behind trims on every
            // message, and a log line each would flood the log.
            tracing::debug!(%user, trimmed, "offline queue full or expired: oldest messages dropped");
            metrics::counter!(telemetry::OFFLINE_TRIMMED).increment(trimmed as u64);
        }
        Ok(())
    }

    async fn read(&self, user: &UserId, limit: usize) -> Result<Vec<Envelope>, StoreError> {
        let mut queues = self.queues.lock();
        let Some(queue) = queues.get_mut(user) else {
            return Ok(Vec::new());
        };
        self.trim(queue);
        Ok(queue.iter().take(limit).cloned().collect())
    }

    async fn ack(&self, user: &UserId, ids: &[MessageId]) -> Result<usize, StoreError> {
        let mut queues = self.queues.lock();
        let Some(queue) = queues.get_mut(user) else {
            return Ok(0);
        };
        let before = queue.len();
        queue.retain(|e| !ids.contains(&e.id));
        let removed = before - queue.len();
        metrics::gauge!(telemetry::OFFLINE_MESSAGES).decrement(removed as f64);
        if queue.is_empty() {
            queues.remove(user);
        }
        let mut dead = self.dead.lock();
        for id in ids {
            dead.failures.remove(&(user.clone(), *id));
        }
        Ok(removed)
    }

    async fn depth(&self, user: &UserId) -> Result<usize, StoreError> {
        Ok(self.queues.lock().get(user).map_or(0, VecDeque::len))
    }

    async fn flag(&self, gateway: &GatewayId, user: &UserId) -> Result<(), StoreError> {
        self.flagged
            .lock()
            .entry(gateway.clone())
            .or_default()
            .insert(user.clone());
        Ok(())
    }

    async fn take_flagged(&self, gateway: &GatewayId) -> Result<Vec<UserId>, StoreError> {
        let users = self.flagged.lock().remove(gateway).unwrap_or_default();
        Ok(users.into_iter().collect())
    }

    async fn delivery_failed(
        &self,
        user: &UserId,
        id: MessageId,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut queues = self.queues.lock();
        let mut dead = self.dead.lock();
        let key = (user.clone(), id);
        let failures = dead.failures.entry(key.clone()).or_default();
        *failures += 1;
        if *failures < self.config.max_deliveries {
            return Ok(false);
        }
        dead.failures.remove(&key);
        let Some(queue) = queues.get_mut(user) else {
            return Ok(false);
        };
        let Some(pos) = queue.iter().position(|e| e.id == id) else {
            return Ok(false);
        };
        let Some(envelope) = queue.remove(pos) else {
            return Ok(false);
        };
        let letters = dead.queues.entry(user.clone()).or_default();
        let why = DeadLetterReason::MaxDeliveries;
        letters.push_back(DeadLetter {
            id: id.to_string(),
            reason: why,
            detail: reason.to_owned(),
            dead_at_micros: now_micros(),
            envelope: Some(envelope),
        });
        // The dead-letter queue has the same bound as the queue itself.
        while letters.len() > self.config.max_per_user {
            letters.pop_front();
        }
        telemetry::dead_lettered(why.as_str());
        Ok(true)
    }

    async fn dead_letters(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<(Envelope, String)>, StoreError> {
        let dead = self.dead.lock();
        Ok(dead
            .queues
            .get(user)
            .map(|q| {
                q.iter()
                    .take(limit)
                    .filter_map(|l| Some((l.envelope.clone()?, l.detail.clone())))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn dead_letter_users(&self, limit: usize) -> Result<Vec<(UserId, usize)>, StoreError> {
        let dead = self.dead.lock();
        let mut users: Vec<(i64, UserId, usize)> = dead
            .queues
            .iter()
            .filter_map(|(user, q)| Some((q.back()?.dead_at_micros, user.clone(), q.len())))
            .collect();
        users.sort_unstable_by(|a, b| b.cmp(a));
        Ok(users
            .into_iter()
            .take(limit)
            .map(|(_, user, n)| (user, n))
            .collect())
    }

    async fn dead_letter_entries(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let dead = self.dead.lock();
        Ok(dead
            .queues
            .get(user)
            .map(|q| q.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn restore_dead_letters(
        &self,
        user: &UserId,
        which: Letters<'_>,
    ) -> Result<usize, StoreError> {
        let taken = self.take_letters(user, which, true);
        let restored = taken.len();
        let mut queues = self.queues.lock();
        let queue = queues.entry(user.clone()).or_default();
        queue.extend(taken.into_iter().filter_map(|l| l.envelope));
        metrics::gauge!(telemetry::OFFLINE_MESSAGES).increment(restored as f64);
        Ok(restored)
    }

    async fn purge_dead_letters(
        &self,
        user: &UserId,
        which: Letters<'_>,
    ) -> Result<usize, StoreError> {
        Ok(self.take_letters(user, which, false).len())
    }
}

impl MemoryOffline {
    /// Removes and returns `which` of `user`'s dead letters (only readable
    /// ones when `readable`).
    fn take_letters(&self, user: &UserId, which: Letters<'_>, readable: bool) -> Vec<DeadLetter> {
        let mut dead = self.dead.lock();
        let Some(letters) = dead.queues.get_mut(user) else {
            return Vec::new();
        };
        let (taken, kept): (VecDeque<DeadLetter>, VecDeque<DeadLetter>) = std::mem::take(letters)
            .into_iter()
            .partition(|l| which.takes(&l.id) && (!readable || l.envelope.is_some()));
        *letters = kept;
        if letters.is_empty() {
            dead.queues.remove(user);
        }
        taken.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Destination;

    /// Exactly `max_per_user` kept: the Redis store trims approximately
    /// (`MAXLEN ~`), so this is the memory store's own promise.
    #[tokio::test]
    async fn keeps_the_newest_messages_in_order_and_acks_remove_them() {
        let store = MemoryOffline::new(OfflineConfig {
            max_per_user: 3,
            ..OfflineConfig::default()
        });
        let bob = UserId::from("bob");
        let sent: Vec<Envelope> = (0..5)
            .map(|i| {
                Envelope::new(
                    "alice",
                    "gw",
                    Destination::User(bob.clone()),
                    format!("m{i}"),
                )
            })
            .collect();
        for env in &sent {
            store.append(&bob, env).await.unwrap();
        }
        let kept = store.read(&bob, 10).await.unwrap();
        assert_eq!(kept, sent[2..].to_vec());
        assert_eq!(store.ack(&bob, &[sent[2].id, sent[3].id]).await.unwrap(), 2);
        assert_eq!(store.read(&bob, 10).await.unwrap(), vec![sent[4].clone()]);
    }
}
