//! NATS JetStream transport (async-nats): light to operate, persistent, and
//! deduplicating retried publishes on the server.
//!
//! Layout: one stream for switchyard (`stream`, subjects
//! `{subject_prefix}.>`), one subject per gateway
//! (`{subject_prefix}.{gateway_id}`) and one durable pull consumer per
//! gateway (`{consumer_prefix}{gateway_id}`, filtered to its subject).
//! Every publish carries `Nats-Msg-Id` = `{message_id}:{gateway_id}`: the
//! server drops a retry it already stored (within `duplicate_window`), and
//! because it dedupes across every subject of the stream, the id must name
//! the target too, or the copies of one message for other gateways (a group,
//! a user online on two gateways) would be dropped as retries.
//! Messages are acked only after the inbox accepted them; an unacked message
//! is delivered again after `ack_wait`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::message::{Acker, PublishMessage};
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::{ConnectOptions, Event};
use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::pipeline::{confirm_all, spawn_subscription};
use super::{
    Ack, Acknowledge, Capabilities, Dependencies, Health, HealthCell, Incoming, Outgoing,
    Subscription, Transport, TransportError, TransportFactory, TransportKind,
};
use crate::cause::Cause;
use crate::config::problem::Problem;
use crate::config::range::{Bounded, Bounds, DAY, HOUR, MAX_QUEUE, MINUTE, MS, SECOND};
use crate::envelope::{Envelope, MessageId};
use crate::topology::GatewayId;

const KIND: TransportKind = TransportKind::NATS;

/// Where the stream keeps messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk: survives a server restart.
    #[default]
    File,
    /// In memory: faster, lost when the server restarts.
    Memory,
}

/// `[transports.nats]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma separated (`nats://host:4222`, `tls://...`).
    /// On a cluster list several nodes: start-up tries each, and after a
    /// drop the client reconnects to any node it knows (these and the ones
    /// the cluster announces).
    pub url: String,
    /// A NATS credentials file (JWT + nkey) for authenticated servers.
    pub credentials_file: Option<String>,
    /// The JetStream stream holding every gateway's subject.
    pub stream: String,
    /// A gateway's subject is `{subject_prefix}.{gateway_id}`.
    pub subject_prefix: String,
    /// A gateway's durable consumer is this prefix followed by its id.
    pub consumer_prefix: String,
    /// Messages older than this are dropped by the server.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Bytes the stream may hold; -1 for no limit.
    pub max_bytes: i64,
    /// Replicas of the stream and of every gateway's consumer (1, or 3/5
    /// on a cluster: a node of three can then be lost without losing a
    /// stored message or a consumer's position). An existing stream keeps
    /// the replicas it was created with.
    pub replicas: usize,
    /// Stream storage.
    pub storage: Storage,
    /// How long the server remembers message ids to drop retried publishes.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long a delivered message may stay unacked before redelivery.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Unacked messages a gateway's consumer may have outstanding.
    pub max_ack_pending: i64,
    /// Publishes awaiting the server's ack before a publish fails (the bound
    /// of fire-and-forget publishing).
    pub max_in_flight: usize,
    /// Messages asked for per pull request.
    pub pull_batch: usize,
    /// How long to wait for the server to answer a request or a publish.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long start-up waits for the server before failing.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Received messages buffered per subscription before reading pauses.
    pub queue: usize,
    /// `[transports.nats.envelope_compression]`: compresses envelopes of
    /// at least `min_bytes` (off by default).
    pub envelope_compression: crate::envelope::compression::CompressionConfig,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            credentials_file: None,
            stream: "SWITCHYARD".into(),
            subject_prefix: "sy.gw".into(),
            consumer_prefix: "sy-gw-".into(),
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: -1,
            replicas: 1,
            storage: Storage::File,
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            max_in_flight: 10_000,
            pull_batch: 256,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            queue: 1024,
            envelope_compression: Default::default(),
        }
    }
}

impl Bounded for NatsConfig {
    fn bounds(&self, b: &mut Bounds, section: &str) {
        let s = section;
        b.time(s, "max_age", self.max_age, SECOND, 365 * DAY);
        b.count_or_unlimited(s, "max_bytes", self.max_bytes, 1, i128::from(i64::MAX));
        b.count(s, "replicas", self.replicas, 1, 5);
        b.time(s, "duplicate_window", self.duplicate_window, SECOND, DAY);
        b.time(s, "ack_wait", self.ack_wait, SECOND, HOUR);
        b.count_or_unlimited(s, "max_ack_pending", self.max_ack_pending, 1, MAX_QUEUE);
        b.count(s, "max_in_flight", self.max_in_flight, 1, MAX_QUEUE);
        b.count(s, "pull_batch", self.pull_batch, 1, 100_000);
        b.time(s, "request_timeout", self.request_timeout, MS, 10 * MINUTE);
        b.time(s, "connect_timeout", self.connect_timeout, MS, MINUTE);
        b.count(s, "queue", self.queue, 1, MAX_QUEUE);
        self.envelope_compression
            .bounds(b, &format!("{s}.envelope_compression"));
    }
}

/// NATS JetStream, one subject and one durable consumer per gateway.
pub struct NatsTransport {
    config: NatsConfig,
    jetstream: Context,
    health: Arc<HealthCell>,
}

impl NatsTransport {
    /// Connects and creates the stream if missing; fails with
    /// [`TransportError::Connect`] naming the URL if the server does not
    /// answer or has no JetStream.
    pub async fn connect(config: &NatsConfig) -> Result<Self, TransportError> {
        let connect_err = |reason: Cause| TransportError::Connect {
            transport: KIND,
            address: config.url.clone(),
            reason,
        };
        let health = Arc::new(HealthCell::new(KIND));
        let events = health.clone();
        let url = config.url.clone();
        let mut options = ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .event_callback(move |event| {
                match &event {
                    Event::Connected => events.up(),
                    Event::Disconnected => events.down(format!("disconnected from {url}")),
                    _ => tracing::debug!(transport = %KIND, %event, "nats event"),
                }
                std::future::ready(())
            });
        if let Some(file) = &config.credentials_file {
            options = options
                .credentials_file(file)
                .await
                .map_err(|e| connect_err(Cause::context(format!("credentials file {file}"), e)))?;
        }
        let servers: Vec<&str> = config.url.split(',').map(str::trim).collect();
        let client = options
            .connect(servers.as_slice())
            .await
            .map_err(|e| connect_err(Cause::new(e)))?;
        let jetstream = async_nats::jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .max_ack_inflight(config.max_in_flight)
            // Fail a publish past the bound instead of waiting (the client's
            // default): the router then falls back rather than stalling.
            .backpressure_on_inflight(false)
            .build(client);
        let transport = Self {
            config: config.clone(),
            jetstream,
            health,
        };
        transport.ensure_stream().await.map_err(connect_err)?;
        Ok(transport)
    }

    fn stream_config(&self) -> StreamConfig {
        let c = &self.config;
        StreamConfig {
            name: c.stream.clone(),
            subjects: vec![format!("{}.>", c.subject_prefix)],
            max_age: c.max_age,
            max_bytes: c.max_bytes,
            num_replicas: c.replicas,
            storage: match c.storage {
                Storage::File => StorageType::File,
                Storage::Memory => StorageType::Memory,
            },
            duplicate_window: c.duplicate_window,
            ..Default::default()
        }
    }

    /// One pass of [`Transport::publish_many`]; sets `electing[i]` when
    /// target `i` failed for want of a stream leader ("no responders").
    async fn publish_once(
        &self,
        targets: &[Outgoing<'_>],
        ack: Ack,
        electing: &[AtomicBool],
    ) -> Vec<Result<(), TransportError>> {
        let mut results = Vec::with_capacity(targets.len());
        let mut confirmations = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let publish_err = |reason: Cause| TransportError::Publish {
                transport: KIND,
                gateway: target.to.clone(),
                reason,
            };
            let subject = match self.names(target.to) {
                Ok((subject, _)) => subject,
                Err(reason) => {
                    results.push(Err(publish_err(reason)));
                    continue;
                }
            };
            results.push(Ok(()));
            for bytes in target.batch {
                let id = match Envelope::peek_id(bytes) {
                    Ok(id) => id,
                    Err(e) => {
                        results[i] = Err(publish_err(Cause::context(
                            "no message id for Nats-Msg-Id",
                            e,
                        )));
                        break;
                    }
                };
                let publish = PublishMessage::build()
                    .payload(bytes.clone())
                    .message_id(msg_id(id, target.to));
                match self.jetstream.send_publish(subject.clone(), publish).await {
                    Ok(confirmation) => {
                        let subject = subject.clone();
                        let electing = &electing[i];
                        confirmations.push((i, async move {
                            confirmation.await.map(drop).map_err(|e| {
                                if e.kind() == PublishErrorKind::StreamNotFound {
                                    electing.store(true, Ordering::Relaxed);
                                }
                                publish_err(Cause::context(format!("ack from {subject}"), e))
                            })
                        }));
                    }
                    Err(e) => {
                        if e.kind() == PublishErrorKind::StreamNotFound {
                            electing[i].store(true, Ordering::Relaxed);
                        }
                        // The rest of this gateway's batch waits: nothing overtakes it.
                        results[i] = Err(publish_err(Cause::context(
                            format!("publish to {subject}"),
                            e,
                        )));
                        break;
                    }
                }
            }
        }
        if ack == Ack::Confirmed {
            confirm_all(&mut results, confirmations).await;
        }
        results
    }

    async fn ensure_stream(&self) -> Result<async_nats::jetstream::stream::Stream, Cause> {
        let stream = self
            .jetstream
            .get_or_create_stream(self.stream_config())
            .await
            .map_err(|e| Cause::context(format!("stream {}", self.config.stream), e))?;
        let replicas = stream.cached_info().config.num_replicas;
        if replicas != self.config.replicas {
            // Changing replicas moves data between servers: an operator's
            // decision (`nats stream edit`), not a side effect of a start.
            tracing::warn!(stream = %self.config.stream, replicas, configured = self.config.replicas,
                "the existing stream keeps its replicas, not the configured ones");
        }
        Ok(stream)
    }

    /// The subject and consumer name of a gateway, or an error naming the
    /// id if NATS cannot use it as a subject token.
    fn names(&self, gateway: &GatewayId) -> Result<(String, String), Cause> {
        let id = gateway.as_str();
        let legal = |c: char| c.is_ascii_graphic() && !matches!(c, '.' | '*' | '>' | '/' | '\\');
        if id.is_empty() || !id.chars().all(legal) {
            return Err(Cause::from_message(format!(
                "gateway id {id:?} cannot be a NATS subject token or consumer name \
                 (printable ASCII without . * > / \\)"
            )));
        }
        Ok((
            format!("{}.{id}", self.config.subject_prefix),
            format!("{}{id}", self.config.consumer_prefix),
        ))
    }

    fn consumer_config(&self, subject: &str, durable: &str) -> pull::Config {
        pull::Config {
            durable_name: Some(durable.to_owned()),
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            max_ack_pending: self.config.max_ack_pending,
            // Replicated like the stream, so its position survives a node.
            num_replicas: self.config.replicas,
            ..Default::default()
        }
    }
}

/// The `Nats-Msg-Id` of one message to one gateway: a retried publish is a
/// no-op on the server, a copy for another gateway is not.
fn msg_id(id: MessageId, to: &GatewayId) -> String {
    format!("{id}:{to}")
}

/// Acks one message once the inbox accepted it.
struct MessageAck(Acker);

#[async_trait]
impl Acknowledge for MessageAck {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.0.ack().await.map_err(|e| TransportError::Ack {
            transport: KIND,
            reason: Cause::from(e),
        })
    }
}

#[async_trait]
impl TransportFactory for NatsConfig {
    async fn build(&self, _: &Dependencies) -> Result<Arc<dyn Transport>, TransportError> {
        let nats = Arc::new(NatsTransport::connect(self).await?);
        Ok(super::compress::wrap(nats, &self.envelope_compression))
    }

    fn problems(&self, key: &str) -> Vec<Problem> {
        if self.url.trim().is_empty() {
            return vec![Problem {
                key: format!("{key}.url"),
                reason: "must not be empty: the NATS server URL, e.g. nats://127.0.0.1:4222".into(),
            }];
        }
        Vec::new()
    }
}

#[async_trait]
impl Transport for NatsTransport {
    fn kind(&self) -> TransportKind {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            ordered: true,
            redelivers: true,
            direct: false,
        }
    }

    async fn publish(
        &self,
        to: &GatewayId,
        batch: &[Bytes],
        ack: Ack,
    ) -> Result<(), TransportError> {
        let mut results = self.publish_many(&[Outgoing { to, batch }], ack).await;
        results.pop().unwrap_or(Ok(()))
    }

    /// Every target's messages written to the connection, then every
    /// JetStream ack awaited together. A target that got "no responders"
    /// (no stream leader for its subject: a clustered stream electing one)
    /// is published again after 250 ms, 500 ms and 1 s, as NATS's own
    /// clients do; its `Nats-Msg-Id`s let the stream drop what it already
    /// stored.
    async fn publish_many(
        &self,
        targets: &[Outgoing<'_>],
        ack: Ack,
    ) -> Vec<Result<(), TransportError>> {
        let electing: Vec<AtomicBool> = targets.iter().map(|_| AtomicBool::new(false)).collect();
        let mut results = self.publish_once(targets, ack, &electing).await;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_times(3)
            .build();
        loop {
            let again: Vec<usize> = (0..targets.len())
                .filter(|&i| results[i].is_err() && electing[i].swap(false, Ordering::Relaxed))
                .collect();
            let Some(delay) = (!again.is_empty()).then(|| delays.next()).flatten() else {
                return results;
            };
            tracing::debug!(
                targets = again.len(),
                ?delay,
                "nats: no responders, publishing again"
            );
            tokio::time::sleep(delay).await;
            let retried: Vec<Outgoing<'_>> = again.iter().map(|&i| targets[i]).collect();
            let flags: Vec<AtomicBool> = again.iter().map(|_| AtomicBool::new(false)).collect();
            let outcomes = self.publish_once(&retried, ack, &flags).await;
            for ((i, result), flag) in again.into_iter().zip(outcomes).zip(flags) {
                results[i] = result;
                electing[i].store(flag.into_inner(), Ordering::Relaxed);
            }
        }
    }

    async fn subscribe(&self, me: &GatewayId) -> Result<Subscription, TransportError> {
        let subscribe_err = |reason: Cause| TransportError::Subscribe {
            transport: KIND,
            gateway: me.clone(),
            reason,
        };
        let (subject, durable) = self.names(me).map_err(subscribe_err)?;
        let consumer_config = self.consumer_config(&subject, &durable);
        // Fail now, not in the background, if the consumer cannot be made.
        let stream = self.ensure_stream().await.map_err(subscribe_err)?;
        let consumer: pull::Stream = stream
            .get_or_create_consumer::<pull::Config>(&durable, consumer_config.clone())
            .await
            .map_err(|e| subscribe_err(Cause::context(format!("consumer {durable}"), e)))?
            .stream()
            .max_messages_per_batch(self.config.pull_batch)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| subscribe_err(Cause::context(format!("pull from {durable}"), e)))?;
        let jetstream = self.jetstream.clone();
        let stream_config = self.stream_config();
        let pull_batch = self.config.pull_batch;
        Ok(spawn_subscription(
            self.config.queue,
            move |tx| async move {
                let mut messages = Some(consumer);
                loop {
                    let Some(pulling) = messages.as_mut() else {
                        // The server restarted or deleted the consumer: make
                        // stream and consumer again (idempotent) and pull on.
                        tokio::select! {
                            _ = tx.closed() => return,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                        let repull: Result<pull::Stream, async_nats::Error> = async {
                            let stream = jetstream
                                .get_or_create_stream(stream_config.clone())
                                .await?;
                            let consumer = stream
                                .get_or_create_consumer::<pull::Config>(
                                    &durable,
                                    consumer_config.clone(),
                                )
                                .await?;
                            let pulling = consumer
                                .stream()
                                .max_messages_per_batch(pull_batch)
                                .heartbeat(Duration::from_secs(5))
                                .messages()
                                .await?;
                            Ok(pulling)
                        }
                        .await;
                        messages = repull
                        .inspect_err(|e| tracing::debug!(transport = %KIND, %durable, %e, "re-pull failed"))
                        .ok();
                        continue;
                    };
                    let next = tokio::select! {
                        _ = tx.closed() => return,
                        next = pulling.next() => next,
                    };
                    let message = match next {
                        Some(Ok(message)) => message,
                        Some(Err(e)) => {
                            tracing::debug!(transport = %KIND, %durable, %e, "pull error; pulling again");
                            messages = None;
                            continue;
                        }
                        None => {
                            messages = None;
                            continue;
                        }
                    };
                    let (message, acker) = message.split();
                    let incoming = Incoming {
                        bytes: message.payload,
                        ack: Some(Box::new(MessageAck(acker))),
                    };
                    if tx.send(incoming).await.is_err() {
                        return;
                    }
                }
            },
        ))
    }

    fn health(&self) -> Health {
        self.health.get()
    }
}
