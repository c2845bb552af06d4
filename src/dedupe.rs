//! A bounded window of recently seen message ids. Retries and dual-write
//! canaries deliver some messages twice; the inbox drops the second copy.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use foldhash::fast::RandomState;

use crate::envelope::MessageId;

/// Remembers the last `capacity` ids, forgetting the oldest first.
#[derive(Debug)]
pub struct DedupeWindow {
    capacity: usize,
    order: VecDeque<MessageId>,
    /// Every delivery is hashed here once: foldhash, not SipHash (ids come
    /// from our own senders; the seed is still random per process). Each
    /// id carries its first copy's tag (the inbox's sequence number), so
    /// the inbox needs no second map to find the original of a duplicate.
    seen: HashMap<MessageId, u64, RandomState>,
}

impl DedupeWindow {
    /// A window of `capacity` ids (at least one). Memory grows as ids
    /// arrive, not up front: a gateway that attaches once and goes away
    /// must not cost the whole window.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            seen: HashMap::with_hasher(RandomState::default()),
        }
    }

    /// Records `id`; true if it was not in the window (deliver it), false
    /// for a duplicate (drop it).
    pub fn insert(&mut self, id: MessageId) -> bool {
        self.insert_tagged(id, 0).is_ok()
    }

    /// Records `id` with `tag`; `Err` with the tag its first copy was
    /// recorded with when `id` is a duplicate.
    pub fn insert_tagged(&mut self, id: MessageId, tag: u64) -> Result<(), u64> {
        match self.seen.entry(id) {
            Entry::Occupied(first) => return Err(*first.get()),
            Entry::Vacant(slot) => {
                slot.insert(tag);
            }
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.order.push_back(id);
        Ok(())
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_repeats_within_the_window_and_forgets_the_oldest() {
        let mut window = DedupeWindow::new(3);
        let ids: Vec<MessageId> = (0..4).map(|_| MessageId::new()).collect();
        assert!(window.insert(ids[0]));
        assert!(!window.insert(ids[0]), "second copy is a duplicate");
        assert!(window.insert(ids[1]));
        assert!(window.insert(ids[2]));
        assert!(window.insert(ids[3]), "pushes ids[0] out");
        assert_eq!(window.len(), 3);
        assert!(window.insert(ids[0]), "forgotten, so accepted again");
        assert!(!window.insert(ids[3]));
    }

    #[test]
    fn a_duplicate_names_its_first_copy() {
        let mut window = DedupeWindow::new(2);
        let (a, b) = (MessageId::new(), MessageId::new());
        assert_eq!(window.insert_tagged(a, 7), Ok(()));
        assert_eq!(window.insert_tagged(b, 8), Ok(()));
        assert_eq!(
            window.insert_tagged(a, 9),
            Err(7),
            "the first copy's tag stays"
        );
    }
}
