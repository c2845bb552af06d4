//! CPU time and memory of this process, from `/proc` (Linux).

use std::time::Duration;

/// Clock ticks per second of `/proc/self/stat` (`sysconf(_SC_CLK_TCK)`,
/// 100 on every Linux platform we run on; reading it needs libc).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time of this process so far; zero where `/proc` is
/// unreadable (the figure is then reported as 0, not guessed).
pub fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND)
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
}
