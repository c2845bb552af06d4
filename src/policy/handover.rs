//! Per-pair order across a transport change. When the transport to a target
//! gateway changes (a gateway joins or leaves the canary cohort, a rollback,
//! a reload), a message on the new transport could overtake one still in
//! flight on the old (Kafka is some 10-30 ms slower than Redis Pub/Sub). So
//! the first publish on the new transport waits until the gateway has been
//! quiet on the old one for `canary.handover`.
//!
//! Waiting once, rather than sticking to the old transport while traffic
//! continues, means a busy gateway still switches (a rollback takes effect
//! within one handover) at the cost of one bounded pause per change.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::topology::GatewayId;
use crate::transport::TransportKind;

/// Entries kept before the table forgets gateways quiet for longer than the
/// handover (which can no longer cause a wait): bounds memory by the number
/// of gateways published to within one handover.
const PRUNE_ABOVE: usize = 1024;

/// The transport and time of the last publish per target gateway.
#[derive(Default)]
pub struct Handover {
    last: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_gateway: HashMap<GatewayId, (TransportKind, Instant)>,
    /// Size at which the next prune runs: doubles past what a prune kept,
    /// so a fleet busier than `PRUNE_ABOVE` gateways does not scan the whole
    /// table on every publish.
    prune_at: usize,
}

impl Handover {
    /// A publish to `to` on `primary` is about to start at `now`: returns how
    /// long to wait first (zero unless the previous publish to `to` went on
    /// another transport less than `quiet` ago), and records it.
    pub fn steer(
        &self,
        to: &GatewayId,
        primary: TransportKind,
        quiet: Duration,
        now: Instant,
    ) -> Duration {
        let mut table = self.last.lock();
        let wait = match table.by_gateway.get(to) {
            Some(&(kind, at)) if kind != primary => quiet.saturating_sub(now.duration_since(at)),
            _ => Duration::ZERO,
        };
        if table.by_gateway.len() >= table.prune_at.max(PRUNE_ABOVE) {
            table
                .by_gateway
                .retain(|_, (_, at)| now.duration_since(*at) < quiet);
            table.prune_at = 2 * table.by_gateway.len();
        }
        table.by_gateway.insert(to.clone(), (primary, now + wait));
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_waits_for_the_old_transport_to_go_quiet() {
        let h = Handover::default();
        let gw = GatewayId::from("gw-2");
        let quiet = Duration::from_millis(500);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(
            h.steer(&gw, TransportKind::KAFKA, quiet, t0),
            ms(0),
            "first publish"
        );
        assert_eq!(
            h.steer(&gw, TransportKind::KAFKA, quiet, t0 + ms(100)),
            ms(0),
            "same transport"
        );
        // Switched back 200 ms after the last Kafka publish: wait the rest.
        assert_eq!(
            h.steer(&gw, TransportKind::REDIS, quiet, t0 + ms(300)),
            ms(300)
        );
        // Later Redis publishes go at once; another gateway is independent.
        assert_eq!(
            h.steer(&gw, TransportKind::REDIS, quiet, t0 + ms(900)),
            ms(0)
        );
        assert_eq!(
            h.steer(&"gw-3".into(), TransportKind::REDIS, quiet, t0 + ms(900)),
            ms(0)
        );
        // A change after a quiet spell costs nothing.
        assert_eq!(
            h.steer(&gw, TransportKind::KAFKA, quiet, t0 + ms(2000)),
            ms(0)
        );
    }

    #[test]
    fn the_table_forgets_quiet_gateways() {
        let h = Handover::default();
        let quiet = Duration::from_millis(500);
        let t0 = Instant::now();
        for i in 0..PRUNE_ABOVE {
            h.steer(
                &GatewayId::try_from(format!("gw-{i}")).unwrap(),
                TransportKind::REDIS,
                quiet,
                t0,
            );
        }
        h.steer(
            &"late".into(),
            TransportKind::REDIS,
            quiet,
            t0 + Duration::from_secs(1),
        );
        assert_eq!(h.last.lock().by_gateway.len(), 1);
    }
}
