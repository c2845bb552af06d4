//! The router as `regions` re-routes with: a handle that does not keep the
//! gateway alive (the guard sits in the gateway's own inbox), reporting
//! only how the send went.

use std::sync::{Arc, Weak};

use futures::future::BoxFuture;

use crate::cause::Report;
use crate::envelope::Envelope;
use crate::regions::{Resend, Resent};

use super::{Inner, Outcome, Router};

/// A router that does not keep its gateway alive.
struct WeakRouter(Weak<Inner>);

impl Resend for WeakRouter {
    fn resend(&self, envelope: Envelope) -> BoxFuture<'static, Option<Resent>> {
        let router = self.0.upgrade().map(|inner| Router { inner });
        Box::pin(async move {
            let report = router?.send(envelope).await;
            Some(match report {
                Ok(report) => match report.outcome {
                    Outcome::Routed {
                        stored_offline: Some(_),
                        ..
                    } => Resent::Offline,
                    Outcome::Routed { targets, .. } if targets.iter().all(|t| t.confirmed) => {
                        Resent::Forwarded
                    }
                    Outcome::Routed { targets, .. } if targets.iter().all(|t| t.result.is_ok()) => {
                        Resent::Unconfirmed
                    }
                    _ => Resent::Failed,
                },
                Err(err) => {
                    tracing::warn!(err = %Report(&err), "misrouted message could not be sent on");
                    Resent::Failed
                }
            })
        })
    }
}

impl Router {
    /// This router as `regions` re-routes with.
    pub(crate) fn resender(&self) -> Arc<dyn Resend> {
        Arc::new(WeakRouter(Arc::downgrade(&self.inner)))
    }
}
