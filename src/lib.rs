//! switchyard: a message router for chat and IM back ends.
//!
//! Gateways hold user connections. When a message must reach a user or a
//! group connected elsewhere, the gateway hands it to its [`Router`], which
//! finds where the recipients are online (presence), decides per target
//! gateway which transport carries it (policy), publishes it once per
//! gateway, and stores it offline when nobody is online or every transport
//! fails. The receiving gateway reads its [`Inbox`].
//!
//! ```no_run
//! use switchyard::{Destination, Envelope, GatewayInfo, Router};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let (router, mut inbox) = Router::builder(GatewayInfo::new("gw-1", "eu")).build().await?;
//! router.connect("alice", "phone").await?;
//! router
//!     .send(Envelope::new("alice", "gw-1", Destination::User("alice".into()), "hi"))
//!     .await?;
//! if let Some(delivery) = inbox.recv().await {
//!     // Handed to alice's connection: the inbox and its transport may forget it.
//!     inbox.ack(delivery.seq);
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! The modules follow the data path, one concept each:
//!
//! - [`envelope`]: the message, its time-ordered id, priority, destination
//!   and the protobuf codec every transport carries; `envelope::compression`
//!   its lz4/zstd form above a size.
//! - [`proto`]: the generated wire types and the gRPC codec (a request
//!   that does not decode is `INVALID_ARGUMENT`).
//! - [`topology`]: ids of users, groups, gateways, regions, and the rules
//!   (length, characters) they hold to: an id is made only by parsing
//!   (`parse`, `TryFrom`, serde), so an invalid one cannot exist.
//!   `stored`: the ids a store hands back, skipped and counted if bad.
//! - [`config`]: typed settings, layered file + environment, validated with
//!   the key and reason of every problem, every number within its range.
//! - [`backends`]: builds every store and transport once from config.
//! - `changes`: change events and the in-process caches (sessions, block
//!   lists, gateways) that follow them.
//! - [`presence`]: who is online where ([`presence::PresenceStore`]), with a
//!   local cache in front.
//! - [`registry`]: live gateways and their regions, in the store or on
//!   etcd (feature `etcd`); the consistent-hash ring that assigns users to
//!   gateways.
//! - [`redis_conn`]: the one Redis connection (standalone, cluster or
//!   Sentinel, [`redis_conn::sentinel`]: finds the master by service name,
//!   follows failovers, waits for replicas) every Redis store and the Redis
//!   transport share, and the change channel caches listen on; every
//!   subscription of a process rides one push connection per deployment.
//! - [`regions`]: one Redis per region; presence replicated between
//!   regions over Kafka; messages that landed on stale presence routed
//!   again where they landed.
//! - [`groups`]: membership and per-gateway distribution of online members.
//! - [`blocks`]: block lists, checked before forwarding.
//! - [`offline`]: per-user queues for recipients with no session, and
//!   their dead letters (`offline::dead_letters`: replay, purge).
//! - [`policy`]: the route decision and transport order per target gateway;
//!   the canary, its live share and auto-rollback, and the handover that
//!   keeps per-pair order when a gateway's transport changes.
//! - [`transport`]: the [`transport::Transport`] trait, its open
//!   [`TransportKind`] (built-in, or named by an embedding crate that adds
//!   its own with [`RouterBuilder::transport`]), the catalog every built-in
//!   transport is listed in once (config sections, construction), and the
//!   backends, one file and one cargo feature each; `transport::compress`,
//!   the envelope compression layer.
//! - [`router`]: the send path, a file per step: `plan` (validate, block,
//!   locate, decide), `batch`, `publish`, `stack` (timeout, retry, canary
//!   feedback and metrics as tower layers around each transport),
//!   `offline`, `report`.
//! - [`inbox`]: the receive path, a file per step: `merge` (subscribe),
//!   `feed` (dedupe, deliver), `ack`, and `replay` of offline messages.
//! - [`dedupe`]: the bounded window of seen message ids.
//! - [`cause`]: the underlying error every library error keeps as its
//!   `source`, and [`cause::Report`], which prints the whole chain.
//! - [`telemetry`]: metric names and the Prometheus recorder.
//! - [`sidecar`]: the gRPC server of `switchyard serve` (Gateway, Admin and
//!   Peer APIs, auth, live config, `/metrics`, `/healthz`, `/readyz`).
//!
//! No module uses one that uses it back (`tests/it/architecture.rs`). Cargo
//! features `redis`, `kafka`, `nats`, `grpc` (sidecar and direct links) and
//! `regions` are on by default; without them the library routes over the
//! in-process memory transport and stores.
//!
//! The `switchyard` binary, its bench and its demo are another crate,
//! `switchyard-cli` (cli/ in the repository), built on this one's public
//! API only.

#![deny(missing_docs, unsafe_code)]

pub mod backends;
pub mod blocks;
pub mod cause;
pub(crate) mod changes;
pub mod config;
pub mod dedupe;
pub mod envelope;
pub mod error;
#[cfg(all(fuzzing, feature = "grpc"))]
pub mod fuzzing;
pub mod groups;
pub mod inbox;
pub mod offline;
pub mod policy;
pub mod presence;
pub mod proto;
#[cfg(feature = "redis")]
pub mod redis_conn;
#[cfg(feature = "regions")]
pub mod regions;
pub mod registry;
pub mod router;
#[cfg(feature = "grpc")]
pub mod sidecar;
#[cfg(any(feature = "redis", feature = "etcd"))]
mod stored;
pub mod telemetry;
pub mod topology;
pub mod transport;

pub use backends::{Backends, BuildError};
pub use changes::Changed;
pub use config::Settings;
pub use envelope::EnvelopeError;
pub use envelope::{Destination, Envelope, MessageId, Priority};
pub use error::{PublishError, SendError, StoreError};
pub use inbox::{Delivery, Inbox, Via};
pub use offline::OfflineReason;
pub use policy::{Decision, Route};
pub use router::{
    Explanation, KeepAlive, Outcome, Router, RouterBuilder, SendReport, TargetReport,
};
pub use topology::{DeviceId, GatewayId, GatewayInfo, GroupId, IdError, Region, UserId};
pub use transport::{TransportError, TransportKind};
