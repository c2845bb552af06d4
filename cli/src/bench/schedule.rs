//! The send timeline every load in a bench run follows, switchyard's and the
//! raw clients' alike, so both see the same offered load.

use std::future::Future;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use switchyard::envelope::now_micros;

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
    /// Open loop only: the thread that sleeps until each send time.
    timer: Option<Timer>,
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
            timer: (rate > 0).then(Timer::start),
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
        if let Some(timer) = &self.timer {
            timer.wait_until(self.start + due_at(self.next)).await;
        }
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

/// Sends on `schedule` from `senders` loops at once (at least one): each
/// takes the next batch (one loop at a time, so the timeline stays in
/// order) and sends it with `send` while the others take theirs, so up to
/// `senders` batches are in flight. Returns the messages handed out, or
/// the first error (the other loops stop at their next batch).
pub async fn run_senders<F, Fut, E>(schedule: Schedule, senders: usize, send: F) -> Result<u64, E>
where
    F: Fn(Vec<i64>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let schedule = tokio::sync::Mutex::new(schedule);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let one = || async {
        loop {
            let stamps = schedule.lock().await.next_batch().await;
            let Some(stamps) = stamps else {
                return Ok(());
            };
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            if let Err(err) = send(stamps).await {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(err);
            }
        }
    };
    let results = futures::future::join_all((0..senders.max(1)).map(|_| one())).await;
    results.into_iter().collect::<Result<Vec<()>, E>>()?;
    Ok(schedule.into_inner().sent())
}

/// Wakes the schedule at each send time without spinning. Tokio's timer
/// has millisecond granularity, so sleeping on it would send up to 1 ms
/// late and charge that to every message; yielding until due instead burns
/// a core. A thread of its own sleeps with `nanosleep` (tens of µs late at
/// most) and then wakes the waiting task. Its name starts with
/// [`LOADGEN_THREAD`], so its CPU counts as the load generator's.
#[derive(Debug)]
struct Timer {
    due: std_mpsc::Sender<(Instant, oneshot::Sender<()>)>,
}

impl Timer {
    fn start() -> Self {
        let (due, requests) = std_mpsc::channel::<(Instant, oneshot::Sender<()>)>();
        let spawned = std::thread::Builder::new()
            .name(format!("{LOADGEN_THREAD}-tmr"))
            .spawn(move || {
                // Ends when the schedule (the sender) is dropped.
                while let Ok((at, wake)) = requests.recv() {
                    if let Some(left) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(left);
                    }
                    let _ = wake.send(());
                }
            });
        if let Err(err) = spawned {
            // Without the thread every wait returns at once: the run goes
            // closed loop at the open-loop stamps, which shows as latency.
            tracing::warn!(%err, "bench timer thread did not start");
        }
        Self { due }
    }

    async fn wait_until(&self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        let (wake, woken) = oneshot::channel();
        if self.due.send((at, wake)).is_ok() {
            let _ = woken.await;
        }
    }
}

/// The name prefix of every load-generator thread (at most 15 bytes of a
/// thread name are kept): [`super::process::threads_cpu_time`] counts them
/// apart from the router's.
pub const LOADGEN_THREAD: &str = "sy-loadgen";

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

    #[tokio::test]
    async fn senders_overlap_their_batches_and_share_the_count() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (busy, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let seen = parking_lot::Mutex::new(Vec::new());
        let sent = run_senders(Schedule::new(0, 5, Stop::Count(40)), 3, |stamps| {
            let (busy, most, seen) = (&busy, &most, &seen);
            async move {
                let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                seen.lock().push(stamps.len());
                tokio::time::sleep(Duration::from_millis(5)).await;
                busy.fetch_sub(1, Ordering::SeqCst);
                Ok::<(), ()>(())
            }
        })
        .await;
        assert_eq!(sent, Ok(40));
        assert_eq!(seen.lock().iter().sum::<usize>(), 40);
        assert_eq!(most.load(Ordering::SeqCst), 3, "three batches in flight");
    }

    #[tokio::test]
    async fn open_loop_waits_on_the_timer_thread() {
        // 200 messages at 20 000/s: 10 ms of timeline, one message per due
        // time; the sender must not run ahead of it.
        // Taken before the schedule, whose timeline starts in `new`.
        let started = Instant::now();
        let mut s = Schedule::new(20_000, 1, Stop::Count(200));
        while s.next_batch().await.is_some() {}
        assert!(started.elapsed() >= Duration::from_micros(9_950));
    }
}
