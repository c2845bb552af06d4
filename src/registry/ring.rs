//! A consistent-hash ring with virtual nodes: assigns users to gateways so
//! that adding or removing a gateway moves only that gateway's share of
//! users. Each gateway owns `vnodes` points on a 64-bit circle; a user goes
//! to the owner of the first point at or after the user's hash.

use crate::topology::{GatewayId, GatewayInfo, Region, UserId};

/// Points per gateway when none is given: enough to keep every gateway's
/// share within roughly ±10% of the mean (measured in `tests/redis_ring.rs`).
pub const DEFAULT_VNODES: u32 = 160;

/// The ring over a set of gateways.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    /// (point, index into `gateways`), sorted by point.
    points: Vec<(u64, usize)>,
    gateways: Vec<GatewayInfo>,
}

impl Ring {
    /// Every gateway gets `vnodes` points.
    pub fn new(gateways: impl IntoIterator<Item = GatewayInfo>, vnodes: u32) -> Self {
        Self::weighted(gateways.into_iter().map(|g| (g, vnodes)))
    }

    /// Each gateway gets its own number of points (its capacity share).
    pub fn weighted(gateways: impl IntoIterator<Item = (GatewayInfo, u32)>) -> Self {
        let mut ring = Ring::default();
        for (gateway, vnodes) in gateways {
            let index = ring.gateways.len();
            for i in 0..vnodes {
                let point = hash(format!("{}#{i}", gateway.id).as_bytes());
                ring.points.push((point, index));
            }
            ring.gateways.push(gateway);
        }
        // Ties (astronomically rare) are broken by gateway id, so every node
        // builds the same ring from the same gateways in any order.
        let gateways = &ring.gateways;
        ring.points
            .sort_by(|a, b| (a.0, &gateways[a.1].id).cmp(&(b.0, &gateways[b.1].id)));
        ring
    }

    /// The gateway a user belongs to; `None` on an empty ring.
    pub fn assign(&self, user: &UserId) -> Option<&GatewayInfo> {
        self.walk(user).next()
    }

    /// The gateway of `region` a user belongs to; `None` if the region has none.
    pub fn assign_in(&self, user: &UserId, region: &Region) -> Option<&GatewayInfo> {
        self.walk(user).find(|g| &g.region == region)
    }

    /// The gateways on the ring.
    pub fn gateways(&self) -> impl Iterator<Item = &GatewayId> {
        self.gateways.iter().map(|g| &g.id)
    }

    /// Owners of the points from the user's hash clockwise, once round.
    fn walk(&self, user: &UserId) -> impl Iterator<Item = &GatewayInfo> {
        let start = self
            .points
            .partition_point(|(p, _)| *p < hash(user.as_str().as_bytes()));
        let (after, before) = self.points.split_at(start);
        before.iter().chain(after).map(|(_, i)| &self.gateways[*i])
    }
}

/// A stable 64-bit hash (FNV-1a, then the MurmurHash3 finalizer to spread
/// FNV's weak low bits): the same on every node, build and platform.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateways(n: usize) -> Vec<GatewayInfo> {
        (0..n)
            .map(|i| {
                let id = GatewayId::try_from(format!("gw-{i}")).unwrap();
                GatewayInfo::new(id, if i % 2 == 0 { "eu" } else { "us" })
            })
            .collect()
    }

    #[test]
    fn the_same_gateways_in_any_order_make_the_same_ring() {
        let mut reversed = gateways(5);
        reversed.reverse();
        let (a, b) = (Ring::new(gateways(5), 50), Ring::new(reversed, 50));
        for u in 0..1000 {
            let user = UserId::try_from(format!("u{u}")).unwrap();
            assert_eq!(
                a.assign(&user).map(|g| &g.id),
                b.assign(&user).map(|g| &g.id)
            );
        }
    }

    #[test]
    fn a_region_gets_only_its_own_gateways() {
        let ring = Ring::new(gateways(6), 50);
        for u in 0..1000 {
            let user = UserId::try_from(format!("u{u}")).unwrap();
            assert_eq!(
                ring.assign_in(&user, &"us".into())
                    .map(|g| g.region.as_str()),
                Some("us")
            );
        }
        assert!(ring.assign_in(&"u".into(), &"ap".into()).is_none());
        assert!(Ring::default().assign(&"u".into()).is_none());
    }
}
