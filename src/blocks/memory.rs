//! In-process block list.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use parking_lot::RwLock;
use tokio::sync::broadcast;

use super::BlockList;
use crate::changes::Changed;
use crate::error::StoreError;
use crate::topology::UserId;

/// Each user's blocked senders.
pub struct MemoryBlocks {
    lists: RwLock<HashMap<UserId, HashSet<UserId>>>,
    changes: broadcast::Sender<Changed<UserId>>,
}

impl Default for MemoryBlocks {
    fn default() -> Self {
        Self {
            lists: RwLock::default(),
            changes: crate::changes::local(),
        }
    }
}

impl MemoryBlocks {
    fn changed(&self, user: &UserId) {
        // No receiver is fine: nobody caches.
        let _ = self.changes.send(Changed::Key(user.clone()));
    }
}

#[async_trait]
impl BlockList for MemoryBlocks {
    async fn block(&self, user: &UserId, blocked: &UserId) -> Result<(), StoreError> {
        self.lists
            .write()
            .entry(user.clone())
            .or_default()
            .insert(blocked.clone());
        self.changed(user);
        Ok(())
    }

    async fn unblock(&self, user: &UserId, blocked: &UserId) -> Result<(), StoreError> {
        let mut lists = self.lists.write();
        if let Some(list) = lists.get_mut(user) {
            list.remove(blocked);
            if list.is_empty() {
                lists.remove(user);
            }
        }
        drop(lists);
        self.changed(user);
        Ok(())
    }

    async fn is_blocked(&self, recipient: &UserId, sender: &UserId) -> Result<bool, StoreError> {
        Ok(self
            .lists
            .read()
            .get(recipient)
            .is_some_and(|list| list.contains(sender)))
    }

    async fn blocked_by(&self, user: &UserId) -> Result<Vec<UserId>, StoreError> {
        Ok(self
            .lists
            .read()
            .get(user)
            .map(|list| list.iter().cloned().collect())
            .unwrap_or_default())
    }

    fn changes(&self) -> broadcast::Receiver<Changed<UserId>> {
        self.changes.subscribe()
    }
}
