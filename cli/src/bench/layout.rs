//! The fleet one measured path drives: one sending gateway and N receiving
//! gateways, each hosting one user, and the messages sent. How messages
//! reach the receivers is the run's [`Spread`]: every message to a group
//! with a member on each gateway (`--fanout`), each message to one user,
//! round robin over the gateways (`--targets`), or a chat mix of Zipf-popular
//! users and groups of mixed sizes (`--workload chat`). Every path builds it
//! the same way; only who hosts the gateways (routers here, or sidecars)
//! differs.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::chat::{Chat, Pick};
use switchyard::envelope::{Destination, Envelope, MessageId};
use switchyard::topology::{GatewayId, GroupId, UserId};

use crate::made_id;

/// How a run's messages reach its receiving gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spread {
    /// Every message to a group with one member on each of N gateways
    /// (N = 1: to the one user): N deliveries per message.
    Group(usize),
    /// Message i to user i mod N, each on its own gateway: one delivery per
    /// message, and a batch splits into up to N per-gateway publishes.
    Users(usize),
    /// The chat mix over N gateways ([`Chat`]), after a warm-up round of
    /// one message per user.
    Chat(usize),
}

impl Spread {
    /// Receiving gateways.
    pub(crate) fn gateways(self) -> usize {
        match self {
            Spread::Group(n) | Spread::Users(n) | Spread::Chat(n) => n.max(1),
        }
    }

    /// Messages that give every receiving gateway one delivery: the
    /// warm-up, so the measured messages start again at the first user.
    pub(crate) fn round(self) -> usize {
        match self {
            Spread::Group(_) => 1,
            Spread::Users(n) | Spread::Chat(n) => n.max(1),
        }
    }

    /// Deliveries each receiving gateway should see for `sent` messages
    /// sent after one [`Self::round`].
    pub(crate) fn expected(self, sent: u64) -> Vec<u64> {
        let n = self.gateways() as u64;
        match self {
            Spread::Group(_) => vec![sent; n as usize],
            Spread::Users(_) => (0..n).map(|j| sent / n + u64::from(j < sent % n)).collect(),
            Spread::Chat(_) => Chat::new(n as usize).expected(n, n + sent),
        }
    }
}

/// Ids and messages of one path's run.
#[derive(Debug)]
pub(crate) struct Layout {
    /// Unique per run, so runs against shared backends don't mix.
    run: String,
    spread: Spread,
    /// Region of the receiving gateways: the sender is in `eu`, so this
    /// picks the route.
    pub(crate) to_region: &'static str,
    payload: Bytes,
    /// Built once: ids are shared, so each message only clones pointers.
    sender: GatewayId,
    sender_user: UserId,
    /// The group, or each receiving user in gateway order.
    destinations: Vec<Destination>,
    /// The chat mix and its groups, in a chat run.
    chat: Option<(Chat, Vec<GroupId>)>,
    /// Index of the next message, which picks its destination.
    next: AtomicU64,
}

impl Layout {
    /// A fresh layout for `route` (`same_region` or `cross_region`).
    pub(crate) fn new(route: &str, spread: Spread, size: usize) -> Self {
        let run = MessageId::new().to_string().to_lowercase();
        let destinations = match spread {
            Spread::Group(n) if n > 1 => {
                vec![Destination::Group(made_id(format!("bench-{run}-g")))]
            }
            _ => (0..spread.round())
                .map(|i| Destination::User(made_id(format!("bench-{run}-u{i}"))))
                .collect(),
        };
        let chat = match spread {
            Spread::Chat(n) => {
                let chat = Chat::new(n);
                let groups = (0..chat.groups())
                    .map(|g| made_id(format!("bench-{run}-g{g}")))
                    .collect();
                Some((chat, groups))
            }
            _ => None,
        };
        Self {
            chat,
            sender: made_id(format!("bench-{run}-a")),
            sender_user: made_id(format!("bench-{run}-s")),
            destinations,
            run,
            spread,
            to_region: if route == "cross_region" { "us" } else { "eu" },
            payload: Bytes::from(super::chat_text(size, 1)),
            next: AtomicU64::new(0),
        }
    }

    /// How the messages reach the receivers.
    pub(crate) fn spread(&self) -> Spread {
        self.spread
    }

    /// The sending gateway, in `eu`.
    pub(crate) fn sender(&self) -> &GatewayId {
        &self.sender
    }

    /// The sending user, hosted by [`Self::sender`].
    pub(crate) fn sender_user(&self) -> &UserId {
        &self.sender_user
    }

    /// Each receiving gateway and the user it hosts.
    pub(crate) fn receivers(&self) -> impl Iterator<Item = (GatewayId, UserId)> + '_ {
        (0..self.spread.gateways()).map(|i| {
            (
                made_id(format!("bench-{}-b{i}", self.run)),
                made_id(format!("bench-{}-u{i}", self.run)),
            )
        })
    }

    /// The groups receiving user `k` joins: the one group of a fan-out
    /// run, the chat groups it is in, or none.
    pub(crate) fn groups_of(&self, k: usize) -> Vec<GroupId> {
        match (&self.chat, self.destinations.first()) {
            (Some((chat, groups)), _) => chat.groups_of(k).map(|g| groups[g].clone()).collect(),
            (None, Some(Destination::Group(group))) => vec![group.clone()],
            (None, _) => Vec::new(),
        }
    }

    /// The next message, created at `stamp` (the schedule's intended send
    /// time): to the group, to the next user in turn, or, in a chat run
    /// past the warm-up round, where the chat mix sends message i. Send
    /// loops share the counter, so the users' shares differ by one at most.
    pub(crate) fn message(&self, stamp: i64) -> Envelope {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        let round = self.destinations.len();
        let to = match &self.chat {
            Some((chat, groups)) if i >= round => match chat.pick(i as u64) {
                Pick::User(k) => self.destinations[k].clone(),
                Pick::Group(g) => Destination::Group(groups[g].clone()),
            },
            _ => self.destinations[i % round].clone(),
        };
        let mut e = Envelope::new(
            self.sender_user.clone(),
            self.sender.clone(),
            to,
            self.payload.clone(),
        );
        e.created_at_micros = stamp;
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_go_round_robin_and_the_warm_up_is_one_round() {
        let layout = Layout::new("same_region", Spread::Users(3), 16);
        let spread = layout.spread();
        let to = |e: Envelope| match e.destination {
            Destination::User(user) => user.to_string(),
            Destination::Group(group) => panic!("a group: {group}"),
        };
        let users: Vec<String> = layout
            .receivers()
            .map(|(_, user)| user.to_string())
            .collect();
        let sent: Vec<String> = (0..spread.round() + 7)
            .map(|_| to(layout.message(0)))
            .collect();
        // After the warm-up round, message i goes to user i mod 3 again.
        for (i, user) in sent.iter().enumerate() {
            assert_eq!(user, &users[i % 3]);
        }
        assert_eq!(spread.expected(7), [3, 2, 2]);
        assert!(layout.groups_of(0).is_empty());
    }

    #[test]
    fn fanout_sends_every_message_to_one_group() {
        let layout = Layout::new("same_region", Spread::Group(4), 16);
        assert_eq!(layout.groups_of(3).len(), 1);
        assert_eq!(layout.receivers().count(), 4);
        assert_eq!(layout.spread().round(), 1);
        assert_eq!(layout.spread().expected(5), [5, 5, 5, 5]);
        let single = Layout::new("same_region", Spread::Group(1), 16);
        assert!(single.groups_of(0).is_empty(), "fan-out 1 is one user");
    }

    #[test]
    fn a_chat_run_warms_every_user_then_sends_what_it_expects() {
        let layout = Layout::new("same_region", Spread::Chat(10), 16);
        let spread = layout.spread();
        let users: Vec<String> = layout
            .receivers()
            .map(|(_, user)| user.to_string())
            .collect();
        let mut due = vec![0u64; 10];
        for i in 0..spread.round() + 500 {
            let members: Vec<usize> = match layout.message(0).destination {
                Destination::User(user) => {
                    vec![users
                        .iter()
                        .position(|u| u == user.as_str())
                        .expect("a receiver")]
                }
                Destination::Group(group) => (0..10)
                    .filter(|k| layout.groups_of(*k).contains(&group))
                    .collect(),
            };
            if i < spread.round() {
                assert_eq!(members, [i], "warm-up: one message per user in turn");
            } else {
                members.iter().for_each(|k| due[*k] += 1);
            }
        }
        assert_eq!(spread.expected(500), due);
    }
}
