//! The send timeline every load in a bench run follows, switchyard's and the
//! raw clients' alike, so both see the same offered load.

use std::time::{Duration, Instant};

use crate::envelope::now_micros;

/// When to stop sending.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this many messages.
    Count(u64),
    /// After this much time.
    After(Duration),
}

/// Hands out batches of send timestamps. Open loop (`rate > 0`): message `i`
/// is due at `start + i / rate`, and its timestamp is that *intended* time,
/// so a sender that falls behind shows up as latency instead of hiding it
/// (no coordinated omission). Closed loop (`rate == 0`): a full batch at
/// once, stamped now.
#[derive(Debug)]
pub struct Schedule {
    rate: u64,
    batch: usize,
    stop: Stop,
    start: Instant,
    wall_start: i64,
    next: u64,
}

impl Schedule {
    /// A timeline starting now.
    pub fn new(rate: u64, batch: usize, stop: Stop) -> Self {
        Self {
            rate,
            batch: batch.max(1),
            stop,
            start: Instant::now(),
            wall_start: now_micros(),
            next: 0,
        }
    }

    /// Messages handed out so far.
    pub fn sent(&self) -> u64 {
        self.next
    }

    /// Time since the timeline started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The timestamps (microseconds since the epoch) of the next batch;
    /// `None` when the run is over. Waits until the first one is due.
    pub async fn next_batch(&mut self) -> Option<Vec<i64>> {
        let left = match self.stop {
            Stop::Count(n) => n.saturating_sub(self.next),
            // Open loop: the timeline fixes the count.
            Stop::After(d) if self.rate > 0 => {
                ((d.as_secs_f64() * self.rate as f64) as u64).saturating_sub(self.next)
            }
            Stop::After(d) => u64::from(self.start.elapsed() < d) * self.batch as u64,
        };
        if left == 0 {
            return None;
        }
        if self.rate == 0 {
            let n = left.min(self.batch as u64);
            self.next += n;
            let now = now_micros();
            return Some(vec![now; n as usize]);
        }
        let due_at = |i: u64| Duration::from_secs_f64(i as f64 / self.rate as f64);
        wait_until(self.start + due_at(self.next)).await;
        // Everything due by now, up to a batch: a late sender catches up in
        // batches rather than one message per wake-up.
        let due_now = (self.start.elapsed().as_secs_f64() * self.rate as f64) as u64 + 1;
        let n = due_now
            .saturating_sub(self.next)
            .clamp(1, self.batch as u64)
            .min(left);
        let stamps = (self.next..self.next + n)
            .map(|i| self.wall_start + due_at(i).as_micros() as i64)
            .collect();
        self.next += n;
        Some(stamps)
    }
}

/// Tokio's timer has millisecond granularity, so a plain sleep would send
/// up to 1 ms late and charge that to every message (a floor above the
/// sub-millisecond targets). Sleep to within [`SPIN`] of `due`, then yield
/// until it: the sender's worker stays busy for that last stretch, which
/// shows in the CPU seconds of open-loop runs.
async fn wait_until(due: Instant) {
    if let Some(coarse) = due.checked_sub(SPIN) {
        tokio::time::sleep_until(coarse.into()).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

/// How close to a send time the schedule stops sleeping and starts yielding.
const SPIN: Duration = Duration::from_millis(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn count_limits_closed_loop_batches() {
        let mut s = Schedule::new(0, 4, Stop::Count(10));
        let mut sizes = Vec::new();
        while let Some(b) = s.next_batch().await {
            sizes.push(b.len());
        }
        assert_eq!(sizes, [4, 4, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_stamps_the_intended_times() {
        let mut s = Schedule::new(1000, 100, Stop::After(Duration::from_millis(10)));
        let mut stamps = Vec::new();
        while let Some(b) = s.next_batch().await {
            stamps.extend(b);
        }
        assert_eq!(stamps.len(), 10);
        // 1 ms apart, whatever the sender's own pace.
        assert!(stamps.windows(2).all(|w| w[1] - w[0] == 1000));
    }
}
