//! A transport's name: one of the built-in kinds of the catalog, or one an
//! embedding crate gives its own transport. `Copy` and compared by value,
//! so policy, metrics and errors carry it freely.

use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;

use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which transport: a built-in one ([`TransportKind::ALL`], e.g.
/// [`TransportKind::MEMORY`]) or one named by an embedding crate
/// ([`TransportKind::named`]). Built-in kinds order first, in catalog
/// order, then named ones by name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransportKind(pub(super) Repr);

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Repr {
    /// A catalog entry: `rank` is its place in the catalog.
    Builtin {
        rank: u8,
        name: &'static str,
    },
    Named(&'static str),
}

/// A name [`TransportKind::named`] refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("transport name {name:?}: {reason}")]
pub struct KindError {
    /// The name given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Names given to [`TransportKind::named`], each kept once for the life of
/// the process: a process names a handful of transports, and a `Copy`
/// kind needs a `'static` name.
static NAMED: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);

/// The longest name: it is a metric label and a config value.
const MAX_NAME: usize = 32;

impl TransportKind {
    /// The kind called `name`: the built-in one of that name, or a kind of
    /// an embedding crate's own (lowercase ASCII letters, digits, `_` and
    /// `-`, starting with a letter, at most 32 bytes: it names the
    /// transport in config, metrics and logs).
    pub fn named(name: &str) -> Result<Self, KindError> {
        if let Some(kind) = Self::parse(name) {
            return Ok(kind);
        }
        let refuse = |reason| KindError {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(refuse("must be 1 to 32 bytes long"));
        }
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(refuse("must start with a lowercase ASCII letter"));
        }
        let allowed =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if !name.chars().all(allowed) {
            return Err(refuse(
                "may hold only lowercase ASCII letters, digits, '_' and '-'",
            ));
        }
        let mut named = NAMED.lock();
        let name = match named.get(name) {
            Some(&kept) => kept,
            None => {
                let kept: &'static str = Box::leak(name.to_owned().into_boxed_str());
                named.insert(kept);
                kept
            }
        };
        Ok(Self(Repr::Named(name)))
    }

    /// The built-in kind of this config name; `None` for any other.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == name)
    }

    /// The built-in names, comma separated, for error messages.
    pub fn known() -> String {
        Self::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The name used in config, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self.0 {
            Repr::Builtin { name, .. } => name,
            Repr::Named(name) => name,
        }
    }

    /// Whether this is one of the catalog's kinds (configured by a
    /// `[transports.*]` section) rather than an embedding crate's.
    pub fn is_builtin(self) -> bool {
        matches!(self.0, Repr::Builtin { .. })
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TransportKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TransportKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::named(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_in_name_is_the_built_in_kind() {
        let memory = TransportKind::named("memory").expect("a built-in name");
        assert_eq!(memory, TransportKind::MEMORY);
        assert!(memory.is_builtin());
    }

    #[test]
    fn a_new_name_is_a_kind_of_its_own_equal_to_itself() {
        let sqs = TransportKind::named("sqs").expect("a valid name");
        assert_eq!(sqs, TransportKind::named("sqs").expect("again"));
        assert_ne!(sqs, TransportKind::MEMORY);
        assert!(!sqs.is_builtin());
        assert_eq!(sqs.to_string(), "sqs");
        // Built-in kinds list first.
        assert!(TransportKind::MEMORY < sqs);
        assert_eq!(
            TransportKind::parse("sqs"),
            None,
            "parse knows built-ins only"
        );
    }

    #[test]
    fn a_bad_name_is_refused_with_the_rule_it_breaks() {
        for (name, rule) in [
            ("", "1 to 32"),
            ("Sqs", "lowercase ASCII letter"),
            ("9p", "lowercase ASCII letter"),
            ("my queue", "only lowercase"),
            (&"x".repeat(33), "1 to 32"),
        ] {
            let err = TransportKind::named(name).expect_err(name);
            assert!(err.to_string().contains(rule), "{name:?}: {err}");
        }
    }

    #[test]
    fn a_kind_reads_and_writes_as_its_name() {
        #[derive(Debug, Serialize, Deserialize)]
        struct Section {
            to: TransportKind,
        }
        let section: Section = toml::from_str("to = \"sqs\"").expect("a name");
        assert_eq!(section.to.as_str(), "sqs");
        let text = toml::to_string(&section).expect("toml");
        assert_eq!(text.trim(), "to = \"sqs\"");
        let bad = toml::from_str::<Section>("to = \"Bad Name\"").expect_err("refused");
        assert!(bad.to_string().contains("Bad Name"), "{bad}");
    }
}
