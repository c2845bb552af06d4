//! CPU time and memory of this process, from `/proc` (Linux).

use std::time::Duration;

/// Clock ticks per second of `/proc/self/stat` (`sysconf(_SC_CLK_TCK)`,
/// 100 on every Linux platform we run on; reading it needs libc).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time of this process so far; zero where `/proc` is
/// unreadable (the figure is then reported as 0, not guessed).
pub fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| parse_stat(&stat).map(|(_, cpu)| cpu))
        .unwrap_or(Duration::ZERO)
}

/// User + system CPU time so far of this process's live threads whose name
/// starts with `prefix` (a thread that ended no longer counts: read it
/// while they run).
pub fn threads_cpu_time(prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| {
            parse_stat(&stat).and_then(|(name, cpu)| name.starts_with(prefix).then_some(cpu))
        })
        .sum()
}

/// The command (thread) name and utime + stime of a `stat` line.
fn parse_stat(stat: &str) -> Option<(&str, Duration)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let (_, name) = head.split_once('(')?;
    // Fields after the parenthesised name; utime and stime are the 14th
    // and 15th fields of the whole line.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu = Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND);
    Some((name, cpu))
}

/// A `/proc/self/status` line in bytes (`VmHWM`: peak RSS, `VmRSS`: now).
pub fn status_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(key)?.strip_prefix(':')?;
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// Peak resident set size of this process, bytes.
pub fn peak_rss() -> u64 {
    status_bytes("VmHWM")
}

/// Resident set size of this process now, bytes.
pub fn rss() -> u64 {
    status_bytes("VmRSS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        // Read the current size first: it may grow before the peak is read.
        let now = rss();
        assert!(now > 0);
        assert!(peak_rss() >= now);
    }

    #[test]
    fn counts_named_threads_apart() {
        // Busy until its own counter shows 50 ms (whatever the machine's
        // load), with a cap in case the counter never moves.
        let busy = std::thread::Builder::new()
            .name("sy-test-busy".into())
            .spawn(|| {
                let started = std::time::Instant::now();
                let mut own = Duration::ZERO;
                while own < Duration::from_millis(50) && started.elapsed() < Duration::from_secs(30)
                {
                    own = threads_cpu_time("sy-test-busy");
                }
                own
            })
            .expect("thread starts");
        let own = busy.join().expect("thread ran");
        assert!(own >= Duration::from_millis(50), "{own:?}");
        assert!(cpu_time() >= own);
        assert_eq!(threads_cpu_time("sy-no-such-thread"), Duration::ZERO);
    }
}
