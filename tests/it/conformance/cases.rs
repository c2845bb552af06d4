//! The cases every transport must pass, modelled on Watermill's universal
//! pub/sub tests. Each takes a connected transport and asserts exact counts.
//! A case that needs a capability (`order`, `resubscribe`, `redelivery`) is
//! generated only for transports that claim it, and [`claims`] checks that
//! what a transport's suite claims is what it reports.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rand::{Rng, RngCore};
use switchyard::cause::Report;
use switchyard::dedupe::DedupeWindow;
use switchyard::policy::live::LivePolicy;
use switchyard::policy::{Policy, RoutingConfig};
#[cfg(any(feature = "it-kafka", feature = "it-nats"))]
use switchyard::transport::Health;
use switchyard::transport::{Ack, Capabilities, Subscription, Transport, Transports};
use switchyard::{
    Backends, Destination, Envelope, GatewayId, GatewayInfo, MessageId, Outcome, Priority, Router,
    Settings,
};

/// How long any wait for messages may take before the case fails.
const PATIENCE: Duration = Duration::from_secs(20);
/// Longer than the test ack_wait (2 s), to see that nothing else arrives.
const QUIET: Duration = Duration::from_millis(2500);

/// A gateway id no other test uses, so cases run in parallel on one broker.
pub fn gateway() -> GatewayId {
    GatewayId::try_from(format!("t{}", ulid::Ulid::new())).unwrap()
}

/// A real envelope with headers and a random payload of `size` bytes.
pub fn envelope(seq: usize, size: usize) -> Envelope {
    let mut payload = vec![0u8; size];
    rand::rng().fill_bytes(&mut payload);
    let destination = if seq.is_multiple_of(2) {
        Destination::User(format!("user-{seq}").parse().unwrap())
    } else {
        Destination::Group(format!("group-{seq}").parse().unwrap())
    };
    let mut env = Envelope::new("sender", "gw-sender", destination, payload)
        .with_priority(if seq.is_multiple_of(3) {
            Priority::High
        } else {
            Priority::Normal
        })
        .with_ttl(Duration::from_secs(600));
    env.headers.insert("seq".into(), seq.to_string());
    env.headers
        .insert("trace-id".into(), format!("trace-{seq}-ü"));
    env
}

fn encode(envelopes: &[Envelope]) -> Vec<Bytes> {
    envelopes.iter().map(Envelope::encode).collect()
}

/// Publishes in batches of `batch`, every batch confirmed.
async fn publish(t: &dyn Transport, to: &GatewayId, envelopes: &[Envelope], batch: usize) {
    for chunk in encode(envelopes).chunks(batch) {
        t.publish(to, chunk, Ack::Confirmed)
            .await
            .unwrap_or_else(|e| panic!("{}: publish failed: {e}", t.kind()));
    }
}

/// Publishes while `reading` runs, and returns what it read: a confirmed
/// publish may wait for the reader (on the grpc transport it is confirmed
/// once the receiving gateway acked it).
async fn publish_while<R: std::future::Future>(
    t: &dyn Transport,
    to: &GatewayId,
    envelopes: &[Envelope],
    batch: usize,
    reading: R,
) -> R::Output {
    let ((), got) = tokio::join!(publish(t, to, envelopes, batch), reading);
    got
}

/// Reads until `want` distinct ids arrived or [`PATIENCE`] ran out; acks
/// each arrival when `ack`. Returns every arrival, duplicates included.
async fn receive(sub: &mut Subscription, want: usize, ack: bool) -> Vec<Envelope> {
    let mut arrivals = Vec::new();
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seen.len() < want {
        let Ok(Some(incoming)) = tokio::time::timeout_at(deadline, sub.next()).await else {
            break;
        };
        let env =
            Envelope::decode(incoming.bytes).expect("transport delivered the bytes it was given");
        if ack {
            if let Some(acker) = incoming.ack {
                acker.ack().await.expect("ack");
            }
        }
        seen.insert(env.id);
        arrivals.push(env);
    }
    arrivals
}

/// Reads until every id of `want` arrived or [`PATIENCE`] ran out, acking
/// each arrival. Returns every arrival, duplicates and strangers included.
async fn receive_all(sub: &mut Subscription, want: &HashSet<MessageId>) -> Vec<Envelope> {
    let mut arrivals = Vec::new();
    let mut missing = want.clone();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !missing.is_empty() {
        let Ok(Some(incoming)) = tokio::time::timeout_at(deadline, sub.next()).await else {
            break;
        };
        if let Some(acker) = incoming.ack {
            acker.ack().await.expect("ack");
        }
        let env =
            Envelope::decode(incoming.bytes).expect("transport delivered the bytes it was given");
        missing.remove(&env.id);
        arrivals.push(env);
    }
    arrivals
}

/// Whatever arrives within `quiet` (acked).
async fn extra(sub: &mut Subscription, quiet: Duration) -> Vec<Envelope> {
    let mut arrivals = Vec::new();
    while let Ok(Some(incoming)) = tokio::time::timeout(quiet, sub.next()).await {
        if let Some(acker) = incoming.ack {
            let _ = acker.ack().await;
        }
        arrivals.extend(Envelope::decode(incoming.bytes).ok());
    }
    arrivals
}

fn ids(envelopes: &[Envelope]) -> Vec<MessageId> {
    envelopes.iter().map(|e| e.id).collect()
}

/// Distinct arrivals after the inbox's dedupe window, and how many copies it dropped.
fn dedupe(arrivals: &[Envelope]) -> (Vec<MessageId>, usize) {
    let mut window = DedupeWindow::new(100_000);
    let mut delivered = Vec::new();
    let mut dropped = 0;
    for env in arrivals {
        if window.insert(env.id) {
            delivered.push(env.id);
        } else {
            dropped += 1;
        }
    }
    (delivered, dropped)
}

/// A case run on a transport that does not promise what it tests is a
/// mistake in the suite, not a pass.
fn needs(t: &dyn Transport, claimed: bool, what: &str) {
    assert!(claimed, "{}: does not claim {what}", t.kind());
}

/// The capabilities a transport's `conformance!` call claims (and so the
/// cases it generates) are the ones the transport reports: a claim it
/// dropped, or one it gained, fails here instead of silently changing
/// which cases run.
pub async fn claims(t: Arc<dyn Transport>, claimed: &[&str]) {
    let expected = Capabilities {
        durable: claimed.contains(&"durable"),
        ordered: claimed.contains(&"ordered"),
        redelivers: claimed.contains(&"redelivers"),
        direct: claimed.contains(&"direct"),
    };
    assert_eq!(
        t.capabilities(),
        expected,
        "{}: reports other capabilities than its suite claims ({claimed:?})",
        t.kind()
    );
}

/// Payload, headers and every envelope field arrive intact, exactly once.
pub async fn integrity(t: Arc<dyn Transport>) {
    let gw = gateway();
    let mut sub = t.subscribe(&gw).await.expect("subscribe");
    let sent: Vec<Envelope> = (0..20).map(|i| envelope(i, i * 97)).collect();
    let got = publish_while(&*t, &gw, &sent, 5, receive(&mut sub, sent.len(), true)).await;
    assert_eq!(got.len(), sent.len(), "{}: delivered != sent", t.kind());
    let by_id: BTreeMap<MessageId, &Envelope> = got.iter().map(|e| (e.id, e)).collect();
    for env in &sent {
        assert_eq!(
            by_id.get(&env.id),
            Some(&env),
            "{}: envelope changed in transit",
            t.kind()
        );
    }
    assert!(
        extra(&mut sub, QUIET).await.is_empty(),
        "{}: acked messages came again",
        t.kind()
    );
}

/// Several publishers to several subscribers at once: each gateway gets
/// exactly its messages, once each, and (if ordered) each publisher's in order.
pub async fn concurrent(t: Arc<dyn Transport>) {
    const PUBLISHERS: usize = 4;
    const PER_PUBLISHER: usize = 50;
    let gateways: Vec<GatewayId> = (0..3).map(|_| gateway()).collect();
    let mut subs = Vec::new();
    for gw in &gateways {
        subs.push(t.subscribe(gw).await.expect("subscribe"));
    }
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            tokio::spawn(async move { receive(&mut sub, PUBLISHERS * PER_PUBLISHER, true).await })
        })
        .collect();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let t = t.clone();
            let gateways = gateways.clone();
            tokio::spawn(async move {
                for gw in &gateways {
                    let mut sent: Vec<Envelope> =
                        (0..PER_PUBLISHER).map(|i| envelope(i, 64)).collect();
                    for env in &mut sent {
                        env.headers.insert("publisher".into(), p.to_string());
                    }
                    publish(&*t, gw, &sent, 10).await;
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    for reader in readers {
        let got = reader.await.expect("reader");
        let (delivered, duplicates) = dedupe(&got);
        assert_eq!(
            delivered.len(),
            PUBLISHERS * PER_PUBLISHER,
            "{}: delivered != sent",
            t.kind()
        );
        assert_eq!(
            duplicates,
            0,
            "{}: duplicates without any failure",
            t.kind()
        );
        if t.capabilities().ordered {
            for p in 0..PUBLISHERS {
                let seqs: Vec<usize> = got
                    .iter()
                    .filter(|e| e.headers["publisher"] == p.to_string())
                    .map(|e| e.headers["seq"].parse().expect("seq"))
                    .collect();
                assert_eq!(
                    seqs,
                    (0..PER_PUBLISHER).collect::<Vec<_>>(),
                    "{}: publisher {p} out of order",
                    t.kind()
                );
            }
        }
    }
}

/// One publisher's messages to one address arrive in publish order, across
/// batches of varying size and both ack modes.
pub async fn order(t: Arc<dyn Transport>) {
    needs(&*t, t.capabilities().ordered, "order");
    let gw = gateway();
    let mut sub = t.subscribe(&gw).await.expect("subscribe");
    let sent: Vec<Envelope> = (0..300).map(|i| envelope(i, 32)).collect();
    let bytes = encode(&sent);
    let mut rng = rand::rng();
    let mut runs = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = rng.random_range(1..=7).min(bytes.len() - at);
        runs.push((at..at + n, rng.random_bool(0.5)));
        at += n;
    }
    let publishing = async {
        for (run, confirmed) in runs {
            let ack = if confirmed { Ack::Confirmed } else { Ack::None };
            t.publish(&gw, &bytes[run], ack).await.expect("publish");
        }
    };
    let ((), got) = tokio::join!(publishing, receive(&mut sub, sent.len(), true));
    assert_eq!(
        ids(&got),
        ids(&sent),
        "{}: order or count differs",
        t.kind()
    );
}

/// Messages for one gateway never reach another.
pub async fn isolation(t: Arc<dyn Transport>) {
    let (a, b) = (gateway(), gateway());
    let mut sub_a = t.subscribe(&a).await.expect("subscribe a");
    let mut sub_b = t.subscribe(&b).await.expect("subscribe b");
    let to_a: Vec<Envelope> = (0..10).map(|i| envelope(i, 16)).collect();
    let to_b: Vec<Envelope> = (0..10).map(|i| envelope(i, 16)).collect();
    async fn read(sub: &mut Subscription, want: usize) -> Vec<Envelope> {
        let mut got = receive(sub, want, true).await;
        got.extend(extra(sub, Duration::from_millis(500)).await);
        got
    }
    let ((), (), got_a, got_b) = tokio::join!(
        publish(&*t, &a, &to_a, 3),
        publish(&*t, &b, &to_b, 3),
        read(&mut sub_a, to_a.len()),
        read(&mut sub_b, to_b.len()),
    );
    for (got, want, name) in [(got_a, &to_a, "a"), (got_b, &to_b, "b")] {
        let got: HashSet<MessageId> = ids(&got).into_iter().collect();
        let want: HashSet<MessageId> = ids(want).into_iter().collect();
        assert_eq!(
            got,
            want,
            "{}: gateway {name} got another gateway's messages or lost its own",
            t.kind()
        );
    }
}

/// A durable transport loses nothing when its subscriber goes away and
/// comes back: messages sent meanwhile, and those received but not acked.
#[cfg(any(feature = "it-kafka", feature = "it-nats"))]
pub async fn resubscribe(t: Arc<dyn Transport>) {
    needs(&*t, t.capabilities().durable, "durability");
    let gw = gateway();
    let first: Vec<Envelope> = (0..20).map(|i| envelope(i, 128)).collect();
    let second: Vec<Envelope> = (20..40).map(|i| envelope(i, 128)).collect();
    let mut sub = t.subscribe(&gw).await.expect("subscribe");
    publish(&*t, &gw, &first, 5).await;
    let mut arrivals = receive(&mut sub, 10, true).await;
    drop(sub);
    publish(&*t, &gw, &second, 5).await;
    let mut sub = t.subscribe(&gw).await.expect("subscribe again");
    let mut all = first.clone();
    all.extend(second);
    let want: HashSet<MessageId> = ids(&all).into_iter().collect();
    let seen: HashSet<MessageId> = ids(&arrivals).into_iter().collect();
    arrivals.extend(receive_all(&mut sub, &want.difference(&seen).copied().collect()).await);
    arrivals.extend(extra(&mut sub, QUIET).await);
    let (delivered, duplicates) = dedupe(&arrivals);
    eprintln!(
        "{}: resubscribe redelivered {duplicates} message(s), dropped by dedupe",
        t.kind()
    );
    assert_eq!(
        delivered.len(),
        all.len(),
        "{}: delivered != sent after re-subscribe",
        t.kind()
    );
    assert_eq!(
        delivered.into_iter().collect::<HashSet<_>>(),
        want,
        "{}: wrong messages",
        t.kind()
    );
}

/// Unacked messages come again to the next subscriber; acked ones do not.
#[cfg(any(feature = "it-redis", feature = "it-kafka", feature = "it-nats"))]
pub async fn redelivery(t: Arc<dyn Transport>) {
    needs(&*t, t.capabilities().redelivers, "redelivery");
    let gw = gateway();
    let sent: Vec<Envelope> = (0..5).map(|i| envelope(i, 64)).collect();
    let mut sub = t.subscribe(&gw).await.expect("subscribe");
    publish(&*t, &gw, &sent, 5).await;
    let unacked = receive(&mut sub, sent.len(), false).await;
    assert_eq!(unacked.len(), sent.len(), "{}: first delivery", t.kind());
    drop(sub);
    let mut sub = t.subscribe(&gw).await.expect("subscribe again");
    let again = receive(&mut sub, sent.len(), true).await;
    let (delivered, _) = dedupe(&again);
    assert_eq!(
        delivered.len(),
        sent.len(),
        "{}: unacked messages were not redelivered",
        t.kind()
    );
    // Give the acks time to be committed before the next subscriber starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(sub);
    let mut sub = t.subscribe(&gw).await.expect("subscribe a third time");
    let after = extra(&mut sub, QUIET).await;
    assert!(
        after.is_empty(),
        "{}: {} acked message(s) delivered again",
        t.kind(),
        after.len()
    );
}

/// Payloads near the 1 MiB limit arrive intact.
pub async fn large_payloads(t: Arc<dyn Transport>) {
    let gw = gateway();
    let mut sub = t.subscribe(&gw).await.expect("subscribe");
    // NATS's default max_payload is 1 MiB for payload and headers together,
    // so stay just under it: the envelope's own fields take a few bytes.
    let sent: Vec<Envelope> = (0..3).map(|i| envelope(i, 1_000_000)).collect();
    let got = publish_while(&*t, &gw, &sent, 1, receive(&mut sub, sent.len(), true)).await;
    assert_eq!(got, sent, "{}: large payloads changed or lost", t.kind());
}

/// Dropping a subscription while publishers are busy neither hangs nor
/// panics; a durable transport then delivers every confirmed message to
/// the next subscriber.
pub async fn close_under_load(t: Arc<dyn Transport>) {
    let gw = gateway();
    let mut sub = t.subscribe(&gw).await.expect("subscribe");
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let (t, gw) = (t.clone(), gw.clone());
            tokio::spawn(async move {
                let (mut confirmed, mut refused) = (Vec::new(), None);
                for chunk in 0..30 {
                    let batch: Vec<Envelope> = (0..10)
                        .map(|i| envelope(p * 1000 + chunk * 10 + i, 256))
                        .collect();
                    match t.publish(&gw, &encode(&batch), Ack::Confirmed).await {
                        Ok(()) => confirmed.extend(ids(&batch)),
                        Err(err) => {
                            refused.get_or_insert_with(|| Report(&err).to_string());
                        }
                    }
                }
                (confirmed, refused)
            })
        })
        .collect();
    let mut arrivals = receive(&mut sub, 100, true).await;
    drop(sub);
    let (mut confirmed, mut refused) = (HashSet::new(), None);
    for p in publishers {
        let done = tokio::time::timeout(PATIENCE, p)
            .await
            .expect("publisher hung after the close");
        let (ids, first_refusal) = done.expect("publisher panicked");
        confirmed.extend(ids);
        refused = refused.or(first_refusal);
    }
    if t.capabilities().durable {
        assert_eq!(
            confirmed.len(),
            600,
            "{}: a durable transport refused publishes (first: {refused:?})",
            t.kind()
        );
        let mut sub = t.subscribe(&gw).await.expect("subscribe again");
        let seen: HashSet<MessageId> = ids(&arrivals).into_iter().collect();
        arrivals
            .extend(receive_all(&mut sub, &confirmed.difference(&seen).copied().collect()).await);
        let (delivered, _) = dedupe(&arrivals);
        let delivered: HashSet<MessageId> = delivered.into_iter().collect();
        let lost = confirmed.difference(&delivered).count();
        assert_eq!(
            (lost, delivered.len()),
            (0, confirmed.len()),
            "{}: (lost, delivered) after close: {} arrived before the close",
            t.kind(),
            seen.len()
        );
    } else {
        let (delivered, duplicates) = dedupe(&arrivals);
        assert_eq!(duplicates, 0);
        assert!(
            delivered.iter().all(|id| confirmed.contains(id)),
            "{}: unconfirmed message arrived",
            t.kind()
        );
    }
}

/// One message published to each of `n` gateways (a group spread over `n`
/// gateways, or a user online on `n`): every gateway gets every message,
/// exactly once. JetStream dedupes `Nats-Msg-Id` across all subjects of its
/// stream, so an id that named only the message let one gateway have it.
async fn fan_out(t: Arc<dyn Transport>, n: usize) {
    let gateways: Vec<GatewayId> = (0..n).map(|_| gateway()).collect();
    let sent: Vec<Envelope> = (0..20).map(|i| envelope(i, 64)).collect();
    let want: HashSet<MessageId> = ids(&sent).into_iter().collect();
    let mut subscriptions = Vec::new();
    for gw in &gateways {
        subscriptions.push(t.subscribe(gw).await.expect("subscribe"));
    }
    // Every gateway reads (and acks) at once, as gateways do: one read
    // after another would leave messages unacked past the ack wait. Each
    // starts its patience once all are subscribed, so ten subscribes in a
    // row (a topic and a group join each, on Kafka) do not eat the first
    // gateway's.
    let mut readers = Vec::new();
    for mut sub in subscriptions {
        let want = want.clone();
        readers.push(tokio::spawn(async move {
            let mut got = receive_all(&mut sub, &want).await;
            got.extend(extra(&mut sub, Duration::from_millis(500)).await);
            got
        }));
    }
    for chunk in encode(&sent).chunks(5) {
        for gw in &gateways {
            t.publish(gw, chunk, Ack::Confirmed)
                .await
                .unwrap_or_else(|e| panic!("{}: publish to {gw} failed: {e}", t.kind()));
        }
    }
    for (gw, reader) in gateways.iter().zip(readers) {
        let got = reader.await.expect("reader");
        let (delivered, duplicates) = dedupe(&got);
        let delivered: HashSet<MessageId> = delivered.into_iter().collect();
        assert_eq!(
            (
                want.difference(&delivered).count(),
                duplicates,
                delivered.len()
            ),
            (0, 0, sent.len()),
            "{}: gateway {gw} of {n}: (lost, duplicates, delivered)",
            t.kind()
        );
    }
}

/// One message to two gateways.
pub async fn to_two_gateways(t: Arc<dyn Transport>) {
    fan_out(t, 2).await
}

/// One message to ten gateways.
pub async fn to_ten_gateways(t: Arc<dyn Transport>) {
    fan_out(t, 10).await
}

/// A low-priority publish to a gateway nobody subscribes to is never what
/// the router reports as delivered and confirmed, unless the transport keeps
/// it for the gateway's next subscriber (and then that subscriber gets it).
pub async fn low_priority_to_nobody(t: Arc<dyn Transport>) {
    let gw = gateway();
    let sent: Vec<Envelope> = (0..5).map(|i| envelope(i, 64)).collect();
    let result = t.publish(&gw, &encode(&sent), Ack::None).await;
    let confirmed = result.is_ok() && t.confirms(Ack::None);
    if !confirmed {
        return;
    }
    assert!(
        t.capabilities().durable,
        "{}: confirmed a low-priority publish to a gateway nobody subscribes to, and keeps nothing",
        t.kind()
    );
    let mut sub = t.subscribe(&gw).await.expect("subscribe");
    let want: HashSet<MessageId> = ids(&sent).into_iter().collect();
    let got: HashSet<MessageId> = ids(&receive_all(&mut sub, &want).await)
        .into_iter()
        .collect();
    assert_eq!(
        want.difference(&got).count(),
        0,
        "{}: confirmed low-priority messages lost",
        t.kind()
    );
}

/// A publish retried after an unknown outcome reaches the gateway once:
/// through the real inbox (and, on NATS, the server's own dedupe).
pub async fn retried_publish_dedupe(t: Arc<dyn Transport>) {
    let me = GatewayInfo::new(gateway(), "test");
    let backends = Backends::from_settings(&Settings::default())
        .await
        .expect("backends");
    let mut transports = Transports::default();
    transports.insert(t.clone());
    let backends = backends.with_transports(transports);
    let (_router, mut inbox) = Router::builder(me.clone())
        .backends(backends)
        .build()
        .await
        .expect("router");
    let sent: Vec<Envelope> = (0..10).map(|i| envelope(i, 64)).collect();
    let bytes = encode(&sent);
    // The first attempt "timed out", so the router publishes the batch again,
    // and a dual-write canary sends part of it a third time.
    let publishing = async {
        t.publish(&me.id, &bytes, Ack::Confirmed)
            .await
            .expect("publish");
        t.publish(&me.id, &bytes, Ack::Confirmed)
            .await
            .expect("retry");
        t.publish(&me.id, &bytes[..3], Ack::None)
            .await
            .expect("third copy");
    };
    let reading = async {
        let mut delivered = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while delivered.len() < sent.len() {
            match tokio::time::timeout_at(deadline, inbox.recv()).await {
                Ok(Some(d)) => {
                    inbox.ack(d.seq);
                    delivered.push(d.envelope);
                }
                _ => break,
            }
        }
        // The retry and the third copy may still be on their way.
        while let Ok(Some(d)) = tokio::time::timeout(QUIET, inbox.recv()).await {
            inbox.ack(d.seq);
            delivered.push(d.envelope);
        }
        delivered
    };
    let ((), delivered) = tokio::join!(publishing, reading);
    assert_eq!(
        delivered.len(),
        sent.len(),
        "{}: inbox delivered != sent (duplicates passed?)",
        t.kind()
    );
    assert_eq!(
        ids(&delivered).into_iter().collect::<HashSet<_>>(),
        ids(&sent).into_iter().collect::<HashSet<_>>(),
        "{}: wrong messages",
        t.kind()
    );
}

/// Routes `MESSAGES` high-priority messages from gw-a to bob on gw-b (same
/// region) over `t` alone, through two routers, and waits until gw-b acked
/// every one.
async fn route_through_routers(t: Arc<dyn Transport>) {
    const MESSAGES: usize = 5;
    let backends = Backends::from_settings(&Settings::default())
        .await
        .expect("backends");
    let mut transports = Transports::default();
    transports.insert(t.clone());
    let backends = backends.with_transports(transports);
    let name = t.kind().as_str().to_owned();
    let routing = RoutingConfig {
        same_region: name.clone(),
        cross_region: name,
        ..RoutingConfig::default()
    };
    let policy = LivePolicy::new(Policy::new(&routing, None, &[t.kind()]).expect("a policy"));
    let router = |id: GatewayId| {
        Router::builder(GatewayInfo::new(id, "eu"))
            .backends(backends.clone())
            .policy(policy.clone())
            .build()
    };
    let (a, b) = (gateway(), gateway());
    let (sender, _) = router(a.clone()).await.expect("router a");
    let (receiver, mut inbox) = router(b.clone()).await.expect("router b");
    receiver.connect("bob", "phone").await.expect("connect bob");
    // Read while sending: a direct link confirms once gw-b acked.
    let reading = async {
        for _ in 0..MESSAGES {
            let delivery = tokio::time::timeout(PATIENCE, inbox.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: a delivery within {PATIENCE:?}", t.kind()))
                .expect("the inbox is open");
            inbox.ack(delivery.seq);
        }
    };
    let sending = async {
        for i in 0..MESSAGES {
            let to_bob = Destination::User("bob".into());
            let envelope = Envelope::new("alice", a.clone(), to_bob, format!("m{i}"))
                .with_priority(Priority::High);
            let report = sender.send(envelope).await.expect("send");
            let confirmed = matches!(&report.outcome, Outcome::Routed { targets, stored_offline: None }
                if targets.len() == 1 && targets[0].gateway == b && targets[0].confirmed);
            assert!(confirmed, "{}: not confirmed to {b}: {report:?}", t.kind());
        }
    };
    tokio::join!(reading, sending);
}

/// The standard metrics, labelled with the transport, are emitted when it
/// carries messages between routers (Vector's `assert_sink_compliance`):
/// `switchyard_messages_total{via}`, `switchyard_publish_duration_seconds
/// {transport, outcome="ok"}`, `switchyard_delivery_latency_seconds{via}`
/// and `switchyard_transport_up{transport} 1`. The case runs on a runtime
/// of its own, every task of which records into a recorder of its own, so
/// other cases running at the same time are not counted.
pub fn metrics<F, Fut>(connect: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Transport>>,
{
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let kind = metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let t = connect().await;
            route_through_routers(t.clone()).await;
            t.kind()
        })
    });
    let scrape = handle.render();
    let name = kind.as_str();
    let samples = |metric: &str, label: &str| -> f64 {
        scrape
            .lines()
            .filter(|line| line.starts_with(metric) && line.contains(label))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let expected = [
        ("switchyard_messages_total{", format!("via=\"{name}\"")),
        (
            "switchyard_publish_duration_seconds_count{",
            format!("transport=\"{name}\""),
        ),
        (
            "switchyard_delivery_latency_seconds_count{",
            format!("via=\"{name}\""),
        ),
        ("switchyard_transport_up{", format!("transport=\"{name}\"")),
    ];
    let missing: Vec<String> = expected
        .iter()
        .filter(|(metric, label)| samples(metric, label) < 1.0)
        .map(|(metric, label)| format!("{metric}{label}}}"))
        .collect();
    assert!(
        missing.is_empty(),
        "{name}: standard metrics missing or zero: {missing:?}\n{scrape}"
    );
}

/// A broker a test can stop and start again, with a transport connected to it.
#[cfg(any(feature = "it-kafka", feature = "it-nats"))]
#[async_trait::async_trait(?Send)]
pub trait Restartable {
    /// The transport under test.
    fn transport(&self) -> Arc<dyn Transport>;
    /// Kills the broker.
    fn stop(&mut self);
    /// Stops the broker with SIGSTOP: connections stay open and nothing
    /// answers, as in a network partition. Dropping the broker kills it.
    fn freeze(&mut self);
    /// Starts it again on the same address.
    async fn start(&mut self);
}

/// The broker dies mid-stream: publishes fail (so the router falls back),
/// health goes down, and after the restart the same transport and the same
/// subscription carry messages again, none lost once confirmed.
#[cfg(any(feature = "it-kafka", feature = "it-nats"))]
pub async fn broker_restart(mut broker: Box<dyn Restartable>) {
    let t = broker.transport();
    let gw = gateway();
    let mut sub = t.subscribe(&gw).await.expect("subscribe");
    let before: Vec<Envelope> = (0..10).map(|i| envelope(i, 64)).collect();
    publish(&*t, &gw, &before, 5).await;
    assert_eq!(
        receive(&mut sub, before.len(), true).await.len(),
        before.len(),
        "{}: before restart",
        t.kind()
    );

    broker.stop();
    let outage = encode(&[envelope(99, 64)]);
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        t.publish(&gw, &outage, Ack::Confirmed),
    )
    .await;
    assert!(
        !matches!(result, Ok(Ok(()))),
        "{}: publish confirmed while the broker was down",
        t.kind()
    );
    let mut went_down = false;
    for _ in 0..100 {
        if matches!(t.health(), Health::Down(_)) {
            went_down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        went_down,
        "{}: health stayed up with the broker gone",
        t.kind()
    );

    broker.start().await;
    let after: Vec<Envelope> = (100..110).map(|i| envelope(i, 64)).collect();
    let bytes = encode(&after);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout(
            Duration::from_secs(10),
            t.publish(&gw, &bytes, Ack::Confirmed),
        )
        .await
        {
            Ok(Ok(())) => break,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{}: never recovered: {other:?}",
                    t.kind()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let got = receive_all(&mut sub, &ids(&after).into_iter().collect()).await;
    let got: HashSet<MessageId> = ids(&got).into_iter().collect();
    for id in ids(&after) {
        assert!(
            got.contains(&id),
            "{}: message confirmed after the restart was lost",
            t.kind()
        );
    }
    assert_eq!(
        t.health(),
        Health::Up,
        "{}: health did not come back",
        t.kind()
    );

    // A gateway may stop while its broker hangs: the subscription still
    // closes, and `and_shut_down` checks that nothing waits for the broker.
    broker.freeze();
    drop(sub);
}

/// Runs a case on a runtime of its own and fails if that runtime does not
/// shut down soon after: a transport that closes on a runtime thread and
/// waits there for a broker that is gone would hang a gateway's exit.
#[cfg(any(feature = "it-kafka", feature = "it-nats"))]
pub fn and_shut_down(case: impl std::future::Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(case);
    let (stopped, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(runtime);
        let _ = stopped.send(());
    });
    assert!(
        wait.recv_timeout(Duration::from_secs(30)).is_ok(),
        "the runtime did not shut down within 30 s after the case: a close blocks one of its threads"
    );
}
