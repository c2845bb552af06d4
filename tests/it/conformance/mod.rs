//! One conformance suite, run against every transport over real servers.
//!
//! Adding a transport is one line at the bottom: a `conformance!` call with
//! a function that connects it, the capabilities it claims (each claim
//! generates the case that tests it; the `claims` case checks the list
//! against what the transport reports), and either a function that starts a
//! private broker for the restart case or the fault tests that cover its
//! failover. A transport with neither (memory, gRPC links: no broker) gets
//! no restart case.
//!
//! A transport from outside the library goes through the same suite:
//! `relay` (tests/it/conformance/embedded.rs) is defined in this test crate, on
//! the public API alone, as an embedding gateway would define its own.
//!
//! The memory, relay and gRPC transports need nothing. The others are built with
//! their test tier (`--features it-redis`, `it-kafka`, `it-nats`) and need
//! the servers of `scripts/services/*.sh start` (NATS JetStream on
//! 127.0.0.1:4222 and its three-node cluster on 22400-22402, the three-node
//! Apache Kafka cluster on 127.0.0.1:9092-9094, Redis, Redis Cluster and
//! Redis Sentinel on 22100-22112);
//! the restart cases start their own `nats-server` on a free port, and a
//! private three-node Kafka cluster (`servers::PrivateKafka`).

mod cases;
pub mod embedded;

/// Connects transports under test, and private brokers for the restart case.
mod factories {
    use std::sync::{Arc, OnceLock};

    use switchyard::error::StoreError;
    use switchyard::registry::Registry;
    use switchyard::sidecar::Sidecar;
    use switchyard::topology::{GatewayId, GatewayInfo};
    use switchyard::transport::grpc::{GrpcConfig, GrpcTransport, PeerLinks};
    #[cfg(feature = "it-kafka")]
    use switchyard::transport::kafka::KafkaTransport;
    use switchyard::transport::memory::{MemoryConfig, MemoryTransport};
    #[cfg(feature = "it-nats")]
    use switchyard::transport::nats::{NatsTransport, Storage};
    use switchyard::transport::Transport;
    use switchyard::{Backends, Settings};

    #[cfg(any(feature = "it-kafka", feature = "it-nats"))]
    use crate::conformance::cases::Restartable;
    #[cfg(feature = "it-redis")]
    use switchyard::redis_conn::sentinel::SentinelConfig;
    #[cfg(feature = "it-redis")]
    use switchyard::transport::redis::{RedisTransport, RedisTransportConfig};
    #[cfg(feature = "it-redis")]
    use testkit::redis_nodes::{redis_config, Deployment};
    #[cfg(any(feature = "it-redis", feature = "it-kafka", feature = "it-nats"))]
    use testkit::servers;
    #[cfg(feature = "it-nats")]
    use testkit::servers::PrivateBroker;
    #[cfg(feature = "it-kafka")]
    use testkit::servers::PrivateKafka;

    pub async fn memory() -> Arc<dyn Transport> {
        Arc::new(MemoryTransport::new(&MemoryConfig::default()))
    }

    /// A transport of the test crate's own, as an embedding crate adds one.
    pub async fn relay() -> Arc<dyn Transport> {
        Arc::new(crate::conformance::embedded::Relay::new())
    }

    #[cfg(feature = "it-kafka")]
    pub use servers::kafka;
    #[cfg(feature = "it-nats")]
    pub use servers::nats;

    #[cfg(feature = "it-redis")]
    async fn redis_on(deployment: Deployment) -> Arc<dyn Transport> {
        let config = RedisTransportConfig {
            connection: redis_config(deployment),
            ..RedisTransportConfig::default()
        };
        let transport = RedisTransport::new(&config)
            .await
            .expect("connect to Redis");
        Arc::new(transport)
    }

    /// Redis Pub/Sub on the standalone Redis (127.0.0.1:6379).
    #[cfg(feature = "it-redis")]
    pub async fn redis() -> Arc<dyn Transport> {
        redis_on(Deployment::Standalone).await
    }

    /// Sharded Pub/Sub on the Redis Cluster (127.0.0.1:7000-7005).
    #[cfg(feature = "it-redis")]
    pub async fn redis_cluster() -> Arc<dyn Transport> {
        redis_on(Deployment::Cluster).await
    }

    /// Pub/Sub on the master the shared sentinels name, each request
    /// waiting for a replica.
    #[cfg(feature = "it-redis")]
    pub async fn redis_sentinel() -> Arc<dyn Transport> {
        let mut connection = redis_config(Deployment::Standalone);
        connection.sentinel = Some(Box::new(SentinelConfig {
            nodes: servers::SENTINELS.map(String::from).to_vec(),
            ..SentinelConfig::default()
        }));
        let config = RedisTransportConfig {
            connection,
            ..RedisTransportConfig::default()
        };
        let transport = RedisTransport::new(&config)
            .await
            .expect("connect through the sentinels");
        Arc::new(transport)
    }

    /// JetStream on the shared three-node cluster, stream and consumers at
    /// replicas 3.
    #[cfg(feature = "it-nats")]
    pub async fn nats_cluster() -> Arc<dyn Transport> {
        let mut config = servers::nats_config(servers::NATS_CLUSTER);
        config.replicas = 3;
        let transport = NatsTransport::connect(&config)
            .await
            .expect("connect to the NATS cluster");
        Arc::new(transport)
    }

    /// Knows every gateway to be at one sidecar address, set once it is bound.
    struct AllAt(Arc<OnceLock<String>>);

    #[async_trait::async_trait]
    impl Registry for AllAt {
        async fn register(&self, _: &GatewayInfo) -> Result<(), StoreError> {
            Ok(())
        }

        async fn deregister(&self, _: &GatewayId) -> Result<(), StoreError> {
            Ok(())
        }

        async fn get(&self, gateway: &GatewayId) -> Result<Option<GatewayInfo>, StoreError> {
            let mut info = GatewayInfo::new(gateway.clone(), "test");
            info.address = self.0.get().cloned().unwrap_or_default();
            Ok(Some(info))
        }

        async fn list(&self) -> Result<Vec<GatewayInfo>, StoreError> {
            Ok(Vec::new())
        }
    }

    /// Direct links: a sidecar on 127.0.0.1:0 whose Peer API feeds a `grpc`
    /// transport that links to that same sidecar for every gateway, so one
    /// transport is both the sending and the receiving half. The sidecar is
    /// leaked: it serves until the test process ends.
    pub async fn grpc() -> Arc<dyn Transport> {
        let mut settings = Settings::default();
        settings.sidecar.listen = "127.0.0.1:0".parse().expect("an address");
        settings.telemetry.listen = "127.0.0.1:0".parse().expect("an address");
        let config = GrpcConfig::default();
        settings.transports.grpc = Some(config.clone());
        let backends = Backends::from_settings(&settings)
            .await
            .expect("memory backends");
        // The address is known once bound: the registry reads it then.
        let address = Arc::new(OnceLock::new());
        let transport = Arc::new(GrpcTransport::new(
            &config,
            Arc::new(AllAt(address.clone())),
        ));
        let backends = backends.with_extension(PeerLinks(transport.clone()));
        let sidecar = Sidecar::start_with_backends(settings, None, backends)
            .await
            .expect("a sidecar on 127.0.0.1:0");
        address
            .set(sidecar.grpc_addr().to_string())
            .expect("set once");
        Box::leak(Box::new(sidecar));
        transport
    }

    #[cfg(feature = "it-nats")]
    struct Private {
        broker: PrivateBroker,
        transport: Arc<dyn Transport>,
    }

    #[cfg(feature = "it-nats")]
    #[async_trait::async_trait(?Send)]
    impl Restartable for Private {
        fn transport(&self) -> Arc<dyn Transport> {
            self.transport.clone()
        }

        fn stop(&mut self) {
            self.broker.kill();
        }

        fn freeze(&mut self) {
            self.broker.freeze();
        }

        async fn start(&mut self) {
            if let Err(e) = self.broker.run().await {
                panic!("restarting the private broker failed: {e}");
            }
        }
    }

    /// A private `nats-server -js` with file storage, so the stream and the
    /// consumer survive the restart as they would in production.
    #[cfg(feature = "it-nats")]
    pub async fn nats_private() -> Box<dyn Restartable> {
        let broker = PrivateBroker::nats().await;
        let mut config = servers::nats_config(&broker.address());
        config.storage = Storage::File;
        let transport = NatsTransport::connect(&config)
            .await
            .expect("connect to the private NATS");
        Box::new(Private {
            broker,
            transport: Arc::new(transport),
        })
    }

    /// A private three-node cluster (base port 21000): the case kills
    /// every node, so the shared cluster other tests use is not touched.
    /// Topics, committed offsets and producer ids survive, as on any Kafka.
    #[cfg(feature = "it-kafka")]
    pub async fn kafka_private() -> Box<dyn Restartable> {
        let cluster = PrivateKafka::start(21000).await;
        let transport = KafkaTransport::connect(&servers::kafka_config(&cluster.brokers()))
            .await
            .expect("connect to the private Kafka cluster");
        Box::new(PrivateCluster {
            cluster,
            transport: Arc::new(transport),
        })
    }

    #[cfg(feature = "it-kafka")]
    struct PrivateCluster {
        cluster: PrivateKafka,
        transport: Arc<dyn Transport>,
    }

    #[cfg(feature = "it-kafka")]
    #[async_trait::async_trait(?Send)]
    impl Restartable for PrivateCluster {
        fn transport(&self) -> Arc<dyn Transport> {
            self.transport.clone()
        }

        fn stop(&mut self) {
            self.cluster.kill_all();
        }

        fn freeze(&mut self) {
            self.cluster.freeze_all();
        }

        async fn start(&mut self) {
            self.cluster.start_all().await;
        }
    }
}

/// Generates one test per case for a transport: the cases every transport
/// passes, one per claimed capability, `claims`, and `broker_restart` when
/// there is a private broker to restart. Node failures of an HA deployment
/// have fault tests of their own (`failover = ` names them) instead.
macro_rules! conformance {
    (
        $name:ident,
        connect = $connect:path,
        claims = [$($claim:ident),* $(,)?]
        $(, private_broker = $private:path)?
        $(, failover = $tests:literal)?
    ) => {
        mod $name {
            conformance!(@cases $connect;
                integrity, concurrent, isolation, large_payloads, close_under_load,
                retried_publish_dedupe, to_two_gateways, to_ten_gateways,
                low_priority_to_nobody);
            $( conformance!(@claim $claim, $connect); )*

            #[test]
            fn metrics() {
                crate::conformance::cases::metrics($connect)
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn claims() {
                crate::conformance::cases::claims($connect().await, &[$(stringify!($claim)),*]).await
            }

            $(
                #[test]
                fn broker_restart() {
                    crate::conformance::cases::and_shut_down(async {
                        crate::conformance::cases::broker_restart($private().await).await
                    })
                }
            )?
        }
    };
    (@claim ordered, $connect:path) => { conformance!(@cases $connect; order); };
    (@claim durable, $connect:path) => { conformance!(@cases $connect; resubscribe); };
    (@claim redelivers, $connect:path) => { conformance!(@cases $connect; redelivery); };
    // What a direct link is for (hot pairs) is the router's: tests/it/sidecar_ops.rs.
    (@claim direct, $connect:path) => {};
    (@cases $connect:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                crate::conformance::cases::$case($connect().await).await
            }
        )*
    };
}

conformance!(
    memory,
    connect = crate::conformance::factories::memory,
    claims = [ordered]
);
// Not switchyard's: defined in this test crate (tests/it/conformance/embedded.rs).
conformance!(
    relay,
    connect = crate::conformance::factories::relay,
    claims = [ordered]
);
#[cfg(feature = "it-kafka")]
conformance!(
    kafka,
    connect = crate::conformance::factories::kafka,
    claims = [durable, ordered, redelivers],
    private_broker = crate::conformance::factories::kafka_private
);
#[cfg(feature = "it-nats")]
conformance!(
    nats,
    connect = crate::conformance::factories::nats,
    claims = [durable, ordered, redelivers],
    private_broker = crate::conformance::factories::nats_private
);
#[cfg(feature = "it-redis")]
conformance!(
    redis,
    connect = crate::conformance::factories::redis,
    claims = [ordered, redelivers]
);
conformance!(
    grpc,
    connect = crate::conformance::factories::grpc,
    claims = [ordered, direct]
);
#[cfg(feature = "it-redis")]
conformance!(
    redis_cluster,
    connect = crate::conformance::factories::redis_cluster,
    claims = [ordered, redelivers]
);
#[cfg(feature = "it-redis")]
conformance!(
    redis_sentinel,
    connect = crate::conformance::factories::redis_sentinel,
    claims = [ordered, redelivers],
    failover = "tests/it/redis_faults.rs"
);
#[cfg(feature = "it-nats")]
conformance!(
    nats_cluster,
    connect = crate::conformance::factories::nats_cluster,
    claims = [durable, ordered, redelivers],
    failover = "tests/it/nats_faults.rs"
);
