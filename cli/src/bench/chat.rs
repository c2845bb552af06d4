//! The chat workload (`--workload chat`): one user per receiving gateway,
//! most messages 1:1 to a Zipf-popular user, the rest to groups of mixed
//! sizes. Which message goes where is a function of its index alone, so
//! the deliveries each gateway is due are counted by replaying the indices
//! sent, with no record of the run.

/// Percent of messages that go to a group.
const GROUP_PERCENT: u64 = 20;
/// Zipf exponent of user popularity: user k (from 0) is picked with weight
/// 1 / (k + 1)^s.
const ZIPF_EXPONENT: f64 = 1.0;
/// Group sizes, each capped at the gateways there are: pairs and small
/// circles most, a few large rooms. Four groups of each.
const GROUP_SIZES: [usize; 6] = [2, 3, 5, 10, 30, 100];
const GROUPS_PER_SIZE: usize = 4;

/// Where one message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// To the user on receiving gateway `k`.
    User(usize),
    /// To group `g` ([`Chat::members`]).
    Group(usize),
}

/// The workload over `users` users, user k on receiving gateway k.
#[derive(Debug, Clone)]
pub(crate) struct Chat {
    /// Cumulative Zipf weights, normalised to end at 1.
    cdf: Vec<f64>,
    /// Each group's members (distinct users).
    groups: Vec<Vec<usize>>,
}

impl Chat {
    pub(crate) fn new(users: usize) -> Self {
        let users = users.max(1);
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (0..users)
            .map(|k| {
                total += 1.0 / ((k + 1) as f64).powf(ZIPF_EXPONENT);
                total
            })
            .collect();
        for c in &mut cdf {
            *c /= total;
        }
        // Members spread over the gateways: group g's start is popular
        // users for the first groups, then further down the ranking.
        let groups = GROUP_SIZES
            .iter()
            .flat_map(|size| std::iter::repeat_n(*size, GROUPS_PER_SIZE))
            .enumerate()
            .map(|(g, size)| {
                let size = size.min(users);
                let start = (g * 7) % users;
                (0..size).map(|m| (start + m) % users).collect()
            })
            .collect();
        Self { cdf, groups }
    }

    /// Where message `i` goes.
    pub(crate) fn pick(&self, i: u64) -> Pick {
        let draw = splitmix64(i);
        if draw % 100 < GROUP_PERCENT {
            return Pick::Group((draw / 100) as usize % self.groups.len());
        }
        // The top 53 bits as a uniform draw in [0, 1).
        let u = (splitmix64(draw) >> 11) as f64 / (1u64 << 53) as f64;
        Pick::User(
            self.cdf
                .partition_point(|c| *c <= u)
                .min(self.cdf.len() - 1),
        )
    }

    /// The users of group `g`.
    pub(crate) fn members(&self, g: usize) -> &[usize] {
        &self.groups[g]
    }

    /// How many groups there are.
    pub(crate) fn groups(&self) -> usize {
        self.groups.len()
    }

    /// The groups user `k` is in.
    pub(crate) fn groups_of(&self, k: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.groups.len()).filter(move |g| self.members(*g).contains(&k))
    }

    /// Deliveries each gateway is due for messages `from..to`: one per
    /// 1:1 message to its user, one per group message with its user in
    /// the group.
    pub(crate) fn expected(&self, from: u64, to: u64) -> Vec<u64> {
        let mut due = vec![0u64; self.cdf.len()];
        for i in from..to {
            match self.pick(i) {
                Pick::User(k) => due[k] += 1,
                Pick::Group(g) => {
                    for k in self.members(g) {
                        due[*k] += 1;
                    }
                }
            }
        }
        due
    }
}

/// A well-mixed 64-bit hash of `x` (splitmix64's finaliser): neighbouring
/// indices pick independently.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn popular_users_get_most_one_to_one_messages_and_a_fifth_go_to_groups() {
        let chat = Chat::new(100);
        let n = 100_000u64;
        let (mut to_groups, mut per_user) = (0u64, vec![0u64; 100]);
        for i in 0..n {
            match chat.pick(i) {
                Pick::Group(_) => to_groups += 1,
                Pick::User(k) => per_user[k] += 1,
            }
        }
        let share = to_groups as f64 / n as f64;
        assert!((0.18..0.22).contains(&share), "group share {share}");
        // Zipf 1.0 over 100 users: the first has ~19 % of 1:1 messages, the
        // tenth about a tenth of that, the last about a hundredth.
        let one = (n - to_groups) as f64;
        let top = per_user[0] as f64 / one;
        assert!((0.17..0.21).contains(&top), "top user's share {top}");
        assert!(per_user[9] * 7 < per_user[0] && per_user[0] < per_user[9] * 14);
        assert!(per_user[99] > 0);
    }

    #[test]
    fn groups_have_mixed_sizes_within_the_gateways_and_distinct_members() {
        let chat = Chat::new(50);
        let mut sizes: Vec<usize> = (0..chat.groups()).map(|g| chat.members(g).len()).collect();
        sizes.dedup();
        assert_eq!(sizes, [2, 3, 5, 10, 30, 50]);
        for g in 0..chat.groups() {
            let mut members = chat.members(g).to_vec();
            members.sort();
            members.dedup();
            assert_eq!(members.len(), chat.members(g).len(), "group {g}");
        }
        let single = Chat::new(1);
        assert!((0..single.groups()).all(|g| single.members(g) == [0]));
    }

    #[test]
    fn what_a_gateway_is_due_is_what_the_picks_send_it() {
        let chat = Chat::new(10);
        let due = chat.expected(10, 1_010);
        let mut counted = vec![0u64; 10];
        for i in 10..1_010 {
            match chat.pick(i) {
                Pick::User(k) => counted[k] += 1,
                Pick::Group(g) => chat.members(g).iter().for_each(|k| counted[*k] += 1),
            }
        }
        assert_eq!(due, counted);
        assert!(
            due.iter().sum::<u64>() > 1_000,
            "groups deliver more than once"
        );
        let in_groups: usize = (0..10).map(|k| chat.groups_of(k).count()).sum();
        let memberships: usize = (0..chat.groups()).map(|g| chat.members(g).len()).sum();
        assert_eq!(in_groups, memberships);
    }
}
