//! A Kafka group consumer that closes off the runtime.

use std::ops::Deref;

use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use tokio::sync::oneshot;

/// A group consumer whose close never runs on a runtime thread: closing
/// commits the stored offsets and leaves the group, and librdkafka blocks
/// in it until a coordinator answers: forever while the brokers hang
/// without resetting connections, as behind a partition
/// (confluentinc/librdkafka#4519; `tests/it/conformance/mod.rs` broker_restart). The last owner, the subscription or a
/// late ack, hands it to a thread of its own; `closed` fires when it is
/// done. A close stuck there never keeps the process from exiting, as a
/// blocking task would keep the runtime from shutting down.
pub(crate) struct GroupConsumer<C: ConsumerContext + 'static> {
    consumer: Option<StreamConsumer<C>>,
    closed: Option<oneshot::Sender<()>>,
}

impl<C: ConsumerContext + 'static> GroupConsumer<C> {
    /// Wraps a subscribed consumer; the receiver fires once it has closed.
    pub(crate) fn new(consumer: StreamConsumer<C>) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let consumer = Self {
            consumer: Some(consumer),
            closed: Some(tx),
        };
        (consumer, rx)
    }
}

impl<C: ConsumerContext + 'static> Deref for GroupConsumer<C> {
    type Target = StreamConsumer<C>;

    fn deref(&self) -> &Self::Target {
        self.consumer
            .as_ref()
            .expect("the consumer is taken only on drop")
    }
}

impl<C: ConsumerContext + 'static> Drop for GroupConsumer<C> {
    fn drop(&mut self) {
        let (Some(consumer), Some(closed)) = (self.consumer.take(), self.closed.take()) else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = closed.send(());
            });
        if let Err(e) = spawned {
            // The consumer went down with the closure: leaving its group
            // is up to the broker's session timeout.
            tracing::warn!(transport = "kafka", %e, "no thread to close a consumer on");
        }
    }
}
