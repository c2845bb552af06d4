//! The one list of built-in transports. Each entry names its
//! [`TransportKind`] constant, its config name, its module's config type and
//! whether it is on by default; the constants, [`TransportKind::ALL`], the
//! names, the `[transports.*]` sections, `enabled()`, validation and
//! construction are all generated from it. A built-in transport is its
//! file, one entry here and one [`TransportFactory`] impl on its config:
//! leave any out and the crate does not compile. A transport of an
//! embedding crate is added to a router instead
//! ([`crate::RouterBuilder::transport`]).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::kind::Repr;
use super::{Transport, TransportError, TransportKind};
use crate::config::problem::Problem;
use crate::config::range::{Bounded, Bounds};
use crate::registry::Registry;

/// What a transport may need from the rest of the node when it is built.
pub struct Dependencies {
    /// Live gateways and their addresses (direct links look peers up).
    pub registry: Arc<dyn Registry>,
    /// What a factory leaves for the parts of the node that serve its
    /// transport, keyed by type (the `grpc` transport leaves the receiving
    /// half of direct links, which the sidecar's Peer API feeds); they
    /// become the backends' extensions ([`crate::Backends::extension`]).
    pub extensions: parking_lot::Mutex<http::Extensions>,
}

/// Builds one transport from its config section; implemented by each
/// transport's config type, which also knows its fields' ranges
/// ([`Bounded`]).
#[async_trait]
pub trait TransportFactory: Bounded + Send + Sync {
    /// Connects the transport.
    async fn build(&self, deps: &Dependencies) -> Result<Arc<dyn Transport>, TransportError>;

    /// What is wrong with this section, keyed under `key`
    /// (`transports.<name>`), beyond the numeric ranges every setting has.
    fn problems(&self, _key: &str) -> Vec<Problem> {
        Vec::new()
    }
}

macro_rules! transports {
    ($(
        $(#[$doc:meta])*
        $kind:ident => $name:ident: $module:ident::$config:ident, default = $on:literal
        $(, feature = $feature:literal)?;
    )+) => {
        /// The built-in kinds, in catalog order: each one's rank.
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        enum Builtin {
            $($(#[cfg(feature = $feature)])? $kind,)+
        }

        impl TransportKind {
            $(
                $(#[$doc])*
                $(#[cfg(feature = $feature)])?
                pub const $kind: TransportKind = TransportKind(Repr::Builtin {
                    rank: Builtin::$kind as u8,
                    name: stringify!($name),
                });
            )+

            /// All built-in kinds compiled in, in the order they are listed
            /// in errors.
            pub const ALL: &[TransportKind] = &[$($(#[cfg(feature = $feature)])? TransportKind::$kind),+];
        }

        /// Per-transport settings; a transport is enabled by having a
        /// section. With no `[transports]` section at all, only memory is
        /// enabled.
        #[derive(Debug, Clone, Deserialize, Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct TransportsConfig {
            $(
                #[doc = concat!("`[transports.", stringify!($name), "]`.")]
                $(#[cfg(feature = $feature)])?
                pub $name: Option<super::$module::$config>,
            )+
        }

        impl Default for TransportsConfig {
            fn default() -> Self {
                Self {
                    $($(#[cfg(feature = $feature)])? $name: $on.then(Default::default),)+
                }
            }
        }

        impl TransportsConfig {
            /// The kinds with a config section.
            pub fn enabled(&self) -> Vec<TransportKind> {
                let mut kinds = Vec::new();
                $(
                    $(#[cfg(feature = $feature)])?
                    if self.$name.is_some() {
                        kinds.push(TransportKind::$kind);
                    }
                )+
                kinds
            }

            /// The section of each enabled transport, by kind.
            fn sections(&self) -> Vec<(TransportKind, &dyn TransportFactory)> {
                let mut sections: Vec<(TransportKind, &dyn TransportFactory)> = Vec::new();
                $(
                    $(#[cfg(feature = $feature)])?
                    if let Some(section) = &self.$name {
                        sections.push((TransportKind::$kind, section));
                    }
                )+
                sections
            }
        }
    };
}

transports! {
    /// In-process channels: single-node deployments and the embedded default.
    MEMORY => memory: memory::MemoryConfig, default = true;
    /// Redis Pub/Sub (sharded on a cluster).
    REDIS => redis: redis::RedisTransportConfig, default = false, feature = "redis";
    /// Kafka topics.
    KAFKA => kafka: kafka::KafkaConfig, default = false, feature = "kafka";
    /// NATS JetStream.
    NATS => nats: nats::NatsConfig, default = false, feature = "nats";
    /// Direct gRPC links between sidecars (hot pairs).
    GRPC => grpc: grpc::GrpcConfig, default = false, feature = "grpc";
}

impl Bounded for TransportsConfig {
    fn bounds(&self, b: &mut Bounds, section: &str) {
        for (kind, config) in self.sections() {
            config.bounds(b, &format!("{section}.{kind}"));
        }
    }
}

impl TransportsConfig {
    /// What is wrong with any enabled section.
    pub fn problems(&self) -> Vec<Problem> {
        self.sections()
            .into_iter()
            .flat_map(|(kind, section)| section.problems(&format!("transports.{kind}")))
            .collect()
    }

    /// Builds every enabled transport.
    pub async fn build(&self, deps: &Dependencies) -> Result<super::Transports, TransportError> {
        let mut built = super::Transports::default();
        for (kind, section) in self.sections() {
            let transport = section.build(deps).await?;
            debug_assert_eq!(transport.kind(), kind, "a factory built another kind");
            built.insert(transport);
        }
        Ok(built)
    }
}

#[cfg(test)]
#[cfg(feature = "kafka")]
mod tests {
    use super::*;
    use crate::transport::kafka::KafkaConfig;

    #[test]
    fn every_kind_parses_from_its_name_and_has_a_section() {
        for &kind in TransportKind::ALL {
            assert_eq!(TransportKind::parse(kind.as_str()), Some(kind));
        }
        let toml: String = TransportKind::ALL
            .iter()
            .map(|k| format!("[{k}]\n"))
            .collect();
        let all: TransportsConfig = toml::from_str(&toml).expect("a section per kind");
        assert_eq!(all.enabled(), TransportKind::ALL);
        assert_eq!(
            TransportsConfig::default().enabled(),
            [TransportKind::MEMORY]
        );
    }

    #[test]
    fn a_section_names_its_own_problems() {
        let config = TransportsConfig {
            kafka: Some(KafkaConfig {
                brokers: " ".into(),
                ..KafkaConfig::default()
            }),
            ..TransportsConfig::default()
        };
        let problems: Vec<String> = config.problems().iter().map(Problem::to_string).collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("transports.kafka.brokers: must not be empty"),
            "{problems:?}"
        );
    }
}
