//! The raw-client baselines: the same messages on the same timeline with the
//! broker's client (or, for direct links, tonic) alone, no router. Each switchyard figure is printed as a
//! ratio to these, taken in the same run.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use bytes::Bytes;
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

use super::schedule::{run_senders, Schedule, Stop};
use super::{new_histogram, BenchError, Load, Measured};
use switchyard::cause::Cause;
use switchyard::envelope::now_micros;
use switchyard::proto::peer_client::PeerClient;
use switchyard::proto::peer_server::{Peer, PeerServer};
use switchyard::proto::{PeerAck, PeerBatch};
use switchyard::transport::grpc::GrpcConfig;
use switchyard::transport::kafka::KafkaConfig;
use switchyard::transport::nats::{NatsConfig, Storage};

/// How long a raw reader waits for the next message before it gives up.
const IDLE: Duration = Duration::from_secs(10);

fn failed(client: &'static str) -> impl Fn(Cause) -> BenchError {
    move |reason| BenchError::Raw { client, reason }
}

/// A chat-like payload of `size` bytes (at least 8) starting with `stamp`:
/// a copy of the text the switchyard rows send (made once per thread, so
/// the baseline pays a copy per message, not the text's making).
fn stamped(size: usize, stamp: i64) -> Vec<u8> {
    thread_local! {
        static TEXT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut payload = TEXT.with(|text| {
        let mut text = text.borrow_mut();
        if text.len() != size.max(8) {
            *text = super::chat_text(size.max(8), 1);
        }
        text.clone()
    });
    payload[..8].copy_from_slice(&stamp.to_be_bytes());
    payload
}

fn latency_of(payload: &[u8]) -> u64 {
    let sent = payload
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_be_bytes)
        .unwrap_or(0);
    now_micros().saturating_sub(sent).max(0) as u64
}

/// Reads stamped payloads until `n` arrived or none came for [`IDLE`];
/// returns the latencies and the time of the last arrival.
async fn read(
    n: u64,
    payloads: impl futures::Stream<Item = impl AsRef<[u8]>>,
) -> (hdrhistogram::Histogram<u64>, Instant) {
    let mut payloads = std::pin::pin!(payloads);
    let mut latency = new_histogram();
    let mut last = Instant::now();
    while latency.len() < n {
        match tokio::time::timeout(IDLE, payloads.next()).await {
            Ok(Some(payload)) => {
                latency.saturating_record(latency_of(payload.as_ref()));
                last = Instant::now();
            }
            Ok(None) | Err(_) => break,
        }
    }
    (latency, last)
}

/// What a raw Redis publisher does per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisDurability {
    /// `PUBLISH` alone: fire and forget.
    Publish,
    /// The durability of switchyard's confirmed route done by hand: per
    /// gateway of a batch one `XADD` of its messages to its stream (capped
    /// like the transport's replay streams) and one `PEXPIRE`, then one
    /// `PUBLISH` per message, all in one pipeline.
    Stream,
}

/// redis-rs alone: pipelined publishes of each batch, message i to channel
/// i mod `load.targets` (the switchyard rows' round robin over gateways),
/// every channel read by one subscriber connection (as switchyard's
/// gateways of one process share one).
pub async fn redis(
    url: &str,
    load: Load,
    durability: RedisDurability,
) -> Result<Measured, BenchError> {
    let err = failed("redis");
    let client = redis::Client::open(url).map_err(|e| err(Cause::new(e)))?;
    let run = ulid::Ulid::new();
    let channels: Vec<String> = (0..load.targets.max(1))
        .map(|i| format!("sy-bench-raw-{run}-{i}"))
        .collect();
    let streams: Vec<String> = channels.iter().map(|c| format!("{c}:stream")).collect();
    let mut pubsub = client
        .get_async_pubsub()
        .await
        .map_err(|e| err(Cause::new(e)))?;
    pubsub
        .subscribe(&channels)
        .await
        .map_err(|e| err(Cause::new(e)))?;
    let publisher = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| err(Cause::new(e)))?;
    let n = load.count;
    let reader = tokio::spawn(async move {
        let payloads = pubsub
            .into_on_message()
            .map(|m| m.get_payload_bytes().to_vec());
        read(n, payloads).await
    });
    let schedule = Schedule::new(load.rate, load.batch, Stop::Count(n));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    let sent = run_senders(schedule, load.senders, |stamps| {
        // The multiplexed connection pipelines every sender's batch.
        let mut publisher = publisher.clone();
        let first = next.fetch_add(stamps.len(), std::sync::atomic::Ordering::Relaxed);
        let (channels, streams, err) = (&channels, &streams, &err);
        async move {
            // Grouped by target, as the router groups a batch by gateway.
            let mut by_target: Vec<(usize, Vec<u8>)> = stamps
                .into_iter()
                .enumerate()
                .map(|(i, stamp)| ((first + i) % channels.len(), stamped(load.size, stamp)))
                .collect();
            by_target.sort_by_key(|(target, _)| *target);
            let mut pipe = redis::pipe();
            for run in by_target.chunk_by(|a, b| a.0 == b.0) {
                let target = run[0].0;
                if durability == RedisDurability::Stream {
                    let xadd = pipe
                        .cmd("XADD")
                        .arg(&streams[target])
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(100_000)
                        .arg("*");
                    for (_, payload) in run {
                        xadd.arg("e").arg(payload);
                    }
                    xadd.ignore();
                    pipe.cmd("PEXPIRE")
                        .arg(&streams[target])
                        .arg(30_000)
                        .ignore();
                }
                for (_, payload) in run {
                    pipe.publish(&channels[target], payload).ignore();
                }
            }
            pipe.query_async::<()>(&mut publisher)
                .await
                .map_err(|e| err(Cause::new(e)))
        }
    })
    .await?;
    let (latency, last) = reader.await.map_err(|e| err(Cause::new(e)))?;
    if durability == RedisDurability::Stream {
        let mut conn = publisher.clone();
        // Err: the streams expire within 30 s anyway.
        let _ = redis::cmd("DEL")
            .arg(&streams)
            .query_async::<()>(&mut conn)
            .await;
    }
    Ok(Measured::new(sent, latency, last - start))
}

/// rdkafka alone, with the producer and consumer settings the transport uses.
pub async fn kafka(config: &KafkaConfig, load: Load) -> Result<Measured, BenchError> {
    let err = failed("rdkafka");
    let topic = format!("sy-bench-raw.{}", ulid::Ulid::new());
    let mut common = ClientConfig::new();
    common.set("bootstrap.servers", &config.brokers);
    let admin: AdminClient<DefaultClientContext> =
        common.create().map_err(|e| err(Cause::new(e)))?;
    // The same partitions and replication as the transport's topics, so
    // both sides of the comparison wait for the same in-sync replicas.
    let new = NewTopic::new(
        &topic,
        config.topics.partitions,
        TopicReplication::Fixed(config.topics.replication),
    );
    admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .map_err(|e| err(Cause::new(e)))?;
    let producer: FutureProducer = common
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", config.linger.as_millis().to_string())
        .create()
        .map_err(|e| err(Cause::new(e)))?;
    let consumer: StreamConsumer = common
        .clone()
        .set("group.id", format!("sy-bench-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set(
            "fetch.wait.max.ms",
            config.fetch_wait_max.as_millis().to_string(),
        )
        .create()
        .map_err(|e| err(Cause::new(e)))?;
    consumer
        .subscribe(&[&topic])
        .map_err(|e| err(Cause::new(e)))?;
    // Warm-up: the consumer has joined its group before the clock starts.
    let warm = stamped(load.size, now_micros());
    producer
        .send(
            FutureRecord::to(&topic).key("bench").payload(&warm),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| err(Cause::new(e)))?;
    consumer.recv().await.map_err(|e| err(Cause::new(e)))?;
    let n = load.count;
    let reader = tokio::spawn(async move {
        // A consumer error (e.g. a rebalance notice) is not a message.
        let payloads = consumer.stream().filter_map(|record| {
            std::future::ready(
                record
                    .ok()
                    .map(|r| r.payload().unwrap_or_default().to_vec()),
            )
        });
        read(n, payloads).await
    });
    let schedule = Schedule::new(load.rate, load.batch, Stop::Count(n));
    let start = Instant::now();
    let sent = run_senders(schedule, load.senders, |stamps| {
        let (producer, topic, err) = (&producer, &topic, &err);
        async move {
            let mut acks = Vec::with_capacity(stamps.len());
            for stamp in stamps {
                let payload = stamped(load.size, stamp);
                let record = FutureRecord::to(topic).key("bench").payload(&payload);
                acks.push(
                    producer
                        .send_result(record)
                        .map_err(|(e, _)| err(Cause::new(e)))?,
                );
            }
            for ack in acks {
                ack.await
                    .map_err(|e| err(Cause::new(e)))?
                    .map_err(|(e, _)| err(Cause::new(e)))?;
            }
            Ok::<(), BenchError>(())
        }
    })
    .await?;
    let (latency, last) = reader.await.map_err(|e| err(Cause::new(e)))?;
    Ok(Measured::new(sent, latency, last - start))
}

/// async-nats JetStream alone: publish with a message id (as the transport
/// does, for dedupe), pull, ack; the stream's storage as configured.
pub async fn nats(config: &NatsConfig, load: Load) -> Result<Measured, BenchError> {
    let err = failed("async-nats");
    let client = async_nats::connect(config.url.as_str())
        .await
        .map_err(|e| err(Cause::new(e)))?;
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream
        .get_or_create_stream(StreamConfig {
            name: "SY_BENCH_RAW".into(),
            subjects: vec!["sybenchraw.>".into()],
            storage: match config.storage {
                Storage::File => StorageType::File,
                Storage::Memory => StorageType::Memory,
            },
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .map_err(|e| err(Cause::new(e)))?;
    let run = ulid::Ulid::new();
    let subject = format!("sybenchraw.{run}");
    let durable = format!("sybenchraw-{run}");
    let messages = stream
        .get_or_create_consumer::<pull::Config>(
            &durable,
            pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: subject.clone(),
                ack_policy: AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| err(Cause::new(e)))?
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await
        .map_err(|e| err(Cause::new(e)))?;
    let n = load.count;
    let reader = tokio::spawn(async move {
        let payloads = messages.filter_map(|message| async move {
            let message = message.ok()?;
            // A lost ack only means a redelivery after ack_wait.
            let _ = message.ack().await;
            Some(message.payload.to_vec())
        });
        read(n, payloads).await
    });
    let schedule = Schedule::new(load.rate, load.batch, Stop::Count(n));
    let start = Instant::now();
    let sent = run_senders(schedule, load.senders, |stamps| {
        let (jetstream, subject, err) = (&jetstream, &subject, &err);
        async move {
            let mut acks = Vec::with_capacity(stamps.len());
            for stamp in stamps {
                let publish = PublishMessage::build()
                    .payload(Bytes::from(stamped(load.size, stamp)))
                    .message_id(ulid::Ulid::new().to_string());
                acks.push(
                    jetstream
                        .send_publish(subject.clone(), publish)
                        .await
                        .map_err(|e| err(Cause::new(e)))?,
                );
            }
            for ack in acks {
                ack.await.map_err(|e| err(Cause::new(e)))?;
            }
            Ok::<(), BenchError>(())
        }
    })
    .await?;
    let (latency, last) = reader.await.map_err(|e| err(Cause::new(e)))?;
    // Best effort: the raw stream's consumer is not needed after the run.
    let _ = stream.delete_consumer(&durable).await;
    Ok(Measured::new(sent, latency, last - start))
}

/// The receiving end of the raw gRPC baseline: the Peer service with no
/// router behind it, handing every payload to the reader.
struct Forward {
    payloads: mpsc::Sender<Bytes>,
}

#[tonic::async_trait]
impl Peer for Forward {
    type LinkStream = ReceiverStream<Result<PeerAck, Status>>;

    async fn link(
        &self,
        request: Request<Streaming<PeerBatch>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let mut batches = request.into_inner();
        let payloads = self.payloads.clone();
        let (acks, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(Ok(batch)) = batches.next().await {
                let mut error = String::new();
                for payload in batch.envelopes {
                    if payloads.send(payload).await.is_err() {
                        error = "the reader is gone".into();
                        break;
                    }
                }
                if acks
                    .send(Ok(PeerAck {
                        seq: batch.seq,
                        error,
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// tonic alone: the Peer API's `Link` stream (what the `grpc` transport
/// sends on) between a client and a minimal server on loopback that hands
/// each batch to a channel and acks it. The client awaits each batch's ack
/// before the next, as a confirmed publish on the transport does. No
/// router, registry, envelope codec or inbox. One batch in flight whatever
/// `--senders` says: the acks of one stream come back in order.
pub async fn grpc(load: Load) -> Result<Measured, BenchError> {
    let err = failed("tonic");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| err(Cause::context("bind 127.0.0.1:0", e)))?;
    let address = listener.local_addr().map_err(|e| err(Cause::new(e)))?;
    // The transport's per-gateway queue, so backpressure starts as early.
    let (payloads, arrived) = mpsc::channel(GrpcConfig::default().queue);
    // The server drains and stops when `_stop` drops, at the end of the run.
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        Server::builder()
            .add_service(PeerServer::new(Forward { payloads }))
            // Nagle off, as the sidecar's server sets it.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| err(Cause::new(e)))?
        .connect()
        .await
        .map_err(|e| err(Cause::context(format!("connect to {address}"), e)))?;
    let (batches, outgoing) = mpsc::channel(1);
    let mut acks = PeerClient::new(channel)
        .link(ReceiverStream::new(outgoing))
        .await
        .map_err(|s| err(Cause::from_message(format!("Link: {}", s.message()))))?
        .into_inner();
    let n = load.count;
    let reader = tokio::spawn(read(n, ReceiverStream::new(arrived)));
    let mut schedule = Schedule::new(load.rate, load.batch, Stop::Count(n));
    let start = Instant::now();
    while let Some(stamps) = schedule.next_batch().await {
        let batch = PeerBatch {
            seq: schedule.sent(),
            to_gateway: String::new(),
            envelopes: stamps
                .into_iter()
                .map(|stamp| Bytes::from(stamped(load.size, stamp)))
                .collect(),
        };
        batches
            .send(batch)
            .await
            .map_err(|_| err(Cause::from_message("the link closed")))?;
        let ack = acks
            .message()
            .await
            .map_err(|s| err(Cause::from_message(format!("link broke: {}", s.message()))))?
            .ok_or_else(|| err(Cause::from_message("the server closed the link")))?;
        if !ack.error.is_empty() {
            return Err(err(Cause::from_message(ack.error)));
        }
    }
    let (latency, last) = reader.await.map_err(|e| err(Cause::new(e)))?;
    Ok(Measured::new(schedule.sent(), latency, last - start))
}
