//! One conformance suite for every state store (presence, groups, block
//! lists, offline queues, the gateway registry), run against every backend
//! over real servers.
//!
//! Adding a backend is one `stores!` call at the bottom: a [`Deployment`]
//! that builds router nodes on it, and the store groups it provides. A
//! group a backend does not provide (the memory registry never expires a
//! gateway, so `registry_expiry`) is not listed, so no test exists for it.
//!
//! The memory backend needs nothing. Built with `--features it-redis`, the
//! Redis backends run on Redis at 127.0.0.1:6379 and the Redis Cluster on
//! 7000-7005; with `--features it-etcd`, the etcd registry on etcd at
//! 127.0.0.1:2379 (`SWITCHYARD_TEST_ETCD`); both of
//! `scripts/services/*.sh start`.
//!
//! [`Deployment`]: cases::Deployment

mod cases;

/// The backends under test, each as router nodes sharing one deployment.
mod deployments {
    #[cfg(any(feature = "it-redis", feature = "it-etcd"))]
    use std::time::Duration;

    #[cfg(feature = "it-redis")]
    use switchyard::config::StoreConfig;
    #[cfg(feature = "it-redis")]
    use switchyard::redis_conn::RedisConfig;
    use switchyard::{Backends, Settings};
    use tokio::sync::OnceCell;

    use crate::stores::cases::Deployment;
    #[cfg(feature = "it-redis")]
    use testkit::redis_nodes::{self, redis_config};

    /// The embedded default: every node of a process shares one
    /// `Backends`, so "another node" is the same one.
    #[derive(Default)]
    pub struct Memory(OnceCell<Backends>);

    pub fn memory() -> Memory {
        Memory::default()
    }

    #[async_trait::async_trait]
    impl Deployment for Memory {
        fn settings(&self) -> Settings {
            Settings::default()
        }

        #[cfg(any(feature = "it-redis", feature = "it-etcd"))]
        fn set_gateway_ttl(&self, _: &mut Settings, _: Duration) {
            unreachable!("the memory registry has no TTL (no registry_expiry cases)")
        }

        async fn node(&self, settings: &Settings) -> Backends {
            let build = || async {
                Backends::from_settings(settings)
                    .await
                    .expect("memory backends")
            };
            self.0.get_or_init(build).await.clone()
        }
    }

    /// Every store on one Redis deployment under a key prefix of its own;
    /// each node is another connection.
    #[cfg(feature = "it-redis")]
    pub struct Redis(RedisConfig);

    #[cfg(feature = "it-redis")]
    pub fn redis() -> Redis {
        Redis(redis_config(redis_nodes::Deployment::Standalone))
    }

    #[cfg(feature = "it-redis")]
    pub fn redis_cluster() -> Redis {
        Redis(redis_config(redis_nodes::Deployment::Cluster))
    }

    #[cfg(feature = "it-redis")]
    #[async_trait::async_trait]
    impl Deployment for Redis {
        fn settings(&self) -> Settings {
            redis_nodes::settings(&self.0)
        }

        fn set_gateway_ttl(&self, settings: &mut Settings, ttl: Duration) {
            if let StoreConfig::Redis(redis) = &mut settings.store {
                redis.gateway_ttl = ttl;
            }
        }

        async fn node(&self, settings: &Settings) -> Backends {
            redis_nodes::node(settings).await
        }
    }

    /// The registry on etcd under a key prefix of its own, the other
    /// stores in each node's memory (only registry cases run here).
    #[cfg(feature = "it-etcd")]
    pub struct Etcd(switchyard::registry::EtcdConfig);

    #[cfg(feature = "it-etcd")]
    pub fn etcd() -> Etcd {
        Etcd(switchyard::registry::EtcdConfig {
            endpoints: vec![std::env::var("SWITCHYARD_TEST_ETCD")
                .unwrap_or_else(|_| "http://127.0.0.1:2379".into())],
            key_prefix: format!("sy-test-{}", ulid::Ulid::new()),
            ..Default::default()
        })
    }

    #[cfg(feature = "it-etcd")]
    #[async_trait::async_trait]
    impl Deployment for Etcd {
        fn settings(&self) -> Settings {
            Settings {
                registry: switchyard::registry::RegistryConfig::Etcd(self.0.clone()),
                ..Settings::default()
            }
        }

        fn set_gateway_ttl(&self, settings: &mut Settings, ttl: Duration) {
            if let switchyard::registry::RegistryConfig::Etcd(etcd) = &mut settings.registry {
                etcd.lease_ttl = ttl;
            }
        }

        async fn node(&self, settings: &Settings) -> Backends {
            Backends::from_settings(settings)
                .await
                .expect("backends with the registry on etcd")
        }
    }
}

/// Generates one test per case of each store group a backend provides.
macro_rules! stores {
    ($name:ident, $deployment:path, [$($group:ident),* $(,)?]) => {
        mod $name {
            $( stores!(@group $group, $deployment); )*
        }
    };
    (@group presence, $d:path) => {
        stores!(@cases $d;
            presence_keeps_every_device_of_a_user,
            sessions_expire_without_heartbeat,
            a_dead_gateway_takes_its_sessions_with_it,
            a_presence_change_invalidates_the_cache_of_every_node);
    };
    (@group groups, $d:path) => {
        stores!(@cases $d;
            membership_and_per_gateway_counts,
            a_group_message_is_published_once_per_gateway);
    };
    (@group blocks, $d:path) => {
        stores!(@cases $d;
            a_blocked_sender_reaches_nobody,
            a_block_reaches_the_cache_of_every_node);
    };
    (@group offline, $d:path) => {
        stores!(@cases $d;
            offline_messages_replay_in_order_and_acks_remove_them,
            a_message_that_keeps_failing_is_dead_lettered,
            users_flagged_for_a_gateway_are_taken_once);
    };
    (@group registry, $d:path) => {
        stores!(@cases $d;
            a_registered_gateway_is_found_until_it_leaves,
            a_registration_reaches_every_node,
            the_ring_is_balanced_and_moves_only_the_changed_share);
    };
    (@group registry_expiry, $d:path) => {
        stores!(@cases $d;
            an_expired_gateway_loses_its_sessions_and_its_ring_share);
    };
    (@cases $d:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                crate::stores::cases::$case(&$d()).await
            }
        )*
    };
}

stores!(
    memory,
    crate::stores::deployments::memory,
    [presence, groups, blocks, offline, registry]
);
#[cfg(feature = "it-redis")]
stores!(
    redis,
    crate::stores::deployments::redis,
    [presence, groups, blocks, offline, registry, registry_expiry]
);
#[cfg(feature = "it-redis")]
stores!(
    redis_cluster,
    crate::stores::deployments::redis_cluster,
    [presence, groups, blocks, offline, registry, registry_expiry]
);
#[cfg(feature = "it-etcd")]
stores!(
    etcd,
    crate::stores::deployments::etcd,
    [registry, registry_expiry]
);
