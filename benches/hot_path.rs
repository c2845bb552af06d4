//! Micro benchmarks of the per-message hot path. Targets (docs/BENCHMARKS.md):
//! a routing decision with cached presence < 1 µs, envelope encode + decode
//! of 256 B < 1 µs.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use switchyard::dedupe::DedupeWindow;
use switchyard::policy::canary::{bucket, CanaryConfig};
use switchyard::policy::hot_pairs::{HotPairs, HotPairsConfig};
use switchyard::policy::quality::Quality;
use switchyard::policy::RoutingConfig;
use switchyard::policy::{Conditions, Policy};
use switchyard::presence::cache::CachedPresence;
use switchyard::presence::memory::MemoryPresence;
use switchyard::presence::{PresenceConfig, PresenceStore, Session};
use switchyard::transport::TransportKind;
use switchyard::{Destination, Envelope, GatewayId, GatewayInfo, MessageId, UserId};

fn envelope() -> Envelope {
    Envelope::new(
        "alice",
        "gw-eu-1",
        Destination::User("bob".into()),
        vec![7u8; 256],
    )
}

fn codec(c: &mut Criterion) {
    let env = envelope();
    c.bench_function("envelope encode 256B", |b| {
        b.iter(|| black_box(&env).encode())
    });
    let bytes = env.encode();
    c.bench_function("envelope decode 256B", |b| {
        b.iter(|| Envelope::decode(black_box(bytes.clone())))
    });
    c.bench_function("envelope encode+decode 256B", |b| {
        b.iter(|| Envelope::decode(black_box(&env).encode()))
    });
}

fn decision(c: &mut Criterion) {
    let routing = RoutingConfig {
        same_region: "redis".into(),
        cross_region: "kafka".into(),
        fallbacks: vec!["nats".into()],
        ..RoutingConfig::default()
    };
    let canary = CanaryConfig {
        from: "redis".into(),
        to: "kafka".into(),
        share: 30,
        unit: Default::default(),
        mode: Default::default(),
        rollback: Default::default(),
        handover: switchyard::policy::canary::DEFAULT_HANDOVER,
        mirror_wait: switchyard::policy::canary::DEFAULT_MIRROR_WAIT,
    };
    let policy = Policy::new(&routing, Some(&canary), TransportKind::ALL).expect("valid");
    let me = GatewayInfo::new("gw-eu-1", "eu");
    let to = "gw-eu-2".into();
    let region = "eu".into();
    let user = UserId::from("bob");
    let quality = Quality::default();
    let now = Conditions {
        is_up: &|_| true,
        quality: &quality,
    };
    c.bench_function("policy decide (canary, fallbacks)", |b| {
        b.iter(|| policy.decide(&me, black_box(&to), &region, Some(&user), now))
    });

    // Locate (cache hit) + decide per session: what the router does per message.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let presence = runtime.block_on(async {
        let store = Arc::new(MemoryPresence::new(Duration::from_secs(600)));
        let cached = CachedPresence::new(store, &PresenceConfig::default());
        cached
            .online(Session {
                user: user.clone(),
                device: "phone".into(),
                gateway: "gw-eu-2".into(),
                region: "eu".into(),
                since_micros: 0,
            })
            .await
            .expect("memory store");
        cached.locate_shared(&user).await.expect("warm the cache");
        cached
    });
    c.bench_function("locate (cache hit) + decide", |b| {
        b.to_async(&runtime).iter(|| async {
            let sessions = presence
                .locate_shared(black_box(&user))
                .await
                .expect("memory");
            for s in sessions.iter() {
                black_box(policy.decide(&me, &s.gateway, &s.region, Some(&user), now));
            }
        })
    });
}

fn dedupe(c: &mut Criterion) {
    c.bench_function("dedupe insert (100k window, full)", |b| {
        let mut window = DedupeWindow::new(100_000);
        for _ in 0..100_000 {
            window.insert(MessageId::new());
        }
        b.iter_batched(
            MessageId::new,
            |id| window.insert(id),
            BatchSize::SmallInput,
        )
    });
}

fn canary_bucket(c: &mut Criterion) {
    c.bench_function("canary bucket", |b| {
        b.iter(|| bucket(black_box("gw-eu-1234")))
    });
}

fn hot_pair_sketch(c: &mut Criterion) {
    // A full sketch: more distinct pairs than its capacity, so updates evict.
    let pairs = HotPairs::new(
        HotPairsConfig::default(),
        Some(switchyard::transport::TransportKind::GRPC),
    );
    let gateways: Vec<GatewayId> = (0..512)
        .map(|i| GatewayId::try_from(format!("gw-{i}")).unwrap())
        .collect();
    let mut i = 0usize;
    c.bench_function("hot-pair sketch update (512 gateways)", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            let from = &gateways[i % gateways.len()];
            let to = &gateways[(i / 3) % gateways.len()];
            black_box(pairs.observe(from, to))
        })
    });
}

criterion_group!(
    benches,
    codec,
    decision,
    dedupe,
    canary_bucket,
    hot_pair_sketch
);
criterion_main!(benches);
