//! Ranges of numeric settings: the [`Bounds`] collector, and [`Bounded`],
//! which each settings section implements next to its fields. A value
//! outside its range is a [`Problem`] at check-config, start-up and
//! reload, never a panic or an allocation that exhausts the machine later
//! (`limits.inbox_queue = 4e18` used to panic on the first Attach).
//! docs/CONFIGURATION.md lists the ranges; a test keeps the two in step.

use std::time::Duration;

use super::problem::Problem;

/// A mebibyte, for byte sizes.
pub const MIB: i128 = 1024 * 1024;
/// A millisecond.
pub const MS: Duration = Duration::from_millis(1);
/// A second.
pub const SECOND: Duration = Duration::from_secs(1);
/// A minute.
pub const MINUTE: Duration = Duration::from_secs(60);
/// An hour.
pub const HOUR: Duration = Duration::from_secs(3600);
/// A day.
pub const DAY: Duration = Duration::from_secs(24 * 3600);
/// The largest in-process queue or window, in entries.
pub const MAX_QUEUE: i128 = 1_000_000;

/// A settings section whose numeric fields have ranges.
pub trait Bounded {
    /// Checks each numeric field, keyed under `section` (e.g.
    /// `transports.kafka`), into `b`.
    fn bounds(&self, b: &mut Bounds, section: &str);
}

/// Collects the problems, and the keys checked (for the docs test).
#[derive(Debug, Default)]
pub struct Bounds {
    pub(super) problems: Vec<Problem>,
    pub(super) keys: Vec<String>,
}

impl Bounds {
    /// `section.name` must lie in `min..=max`.
    pub fn count(
        &mut self,
        section: &str,
        name: &str,
        value: impl TryInto<i128>,
        min: i128,
        max: i128,
    ) {
        let key = self.key(section, name);
        let value: i128 = value.try_into().unwrap_or(i128::MAX);
        if !(min..=max).contains(&value) {
            self.problem(key, format!("must be between {min} and {max}, got {value}"));
        }
    }

    /// Like [`Bounds::count`], but `-1` also means "no limit".
    pub fn count_or_unlimited(
        &mut self,
        section: &str,
        name: &str,
        value: i64,
        min: i128,
        max: i128,
    ) {
        if value == -1 {
            self.key(section, name);
        } else {
            self.count(section, name, value, min, max);
        }
    }

    /// `section.name` must lie in `min..=max`.
    pub fn time(
        &mut self,
        section: &str,
        name: &str,
        value: Duration,
        min: Duration,
        max: Duration,
    ) {
        let key = self.key(section, name);
        if !(min..=max).contains(&value) {
            let show = humantime_serde::re::humantime::format_duration;
            let reason = format!(
                "must be between {} and {}, got {}",
                show(min),
                show(max),
                show(value)
            );
            self.problem(key, reason);
        }
    }

    /// Like [`Bounds::time`], but zero also means "off".
    pub fn time_or_off(
        &mut self,
        section: &str,
        name: &str,
        value: Duration,
        min: Duration,
        max: Duration,
    ) {
        if value.is_zero() {
            self.key(section, name);
        } else {
            self.time(section, name, value, min, max);
        }
    }

    /// `section.name` must lie in `min..=max`.
    pub fn ratio(&mut self, section: &str, name: &str, value: f64, min: f64, max: f64) {
        let key = self.key(section, name);
        if !(min..=max).contains(&value) {
            self.problem(key, format!("must be between {min} and {max}, got {value}"));
        }
    }

    /// Records the key as checked, and returns it.
    fn key(&mut self, section: &str, name: &str) -> String {
        let key = format!("{section}.{name}");
        self.keys.push(key.clone());
        key
    }

    fn problem(&mut self, key: String, reason: String) {
        self.problems.push(Problem { key, reason });
    }
}
