//! What is wrong with a configuration: one [`Problem`] per key, and the
//! error that lists them. A leaf: every module that checks its own
//! settings names its problems with it, without depending on [`Settings`](super::Settings).

use std::fmt;

/// One thing wrong with the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `routing.cross_region`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Settings that could not be loaded or are invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed.
    #[error("cannot load config")]
    Load(#[from] config::ConfigError),
    /// Parsed, but invalid; every problem is listed.
    #[error("invalid config:\n  {}", .0.iter().map(Problem::to_string).collect::<Vec<_>>().join("\n  "))]
    Invalid(Vec<Problem>),
}
