//! The bottom of the route stack: the decision's transports in order, each
//! through its own stack (`stack.rs`) with the gateways no earlier one
//! took, all of them in one call. A gateway's run is out once one
//! transport took it; one that none took carries every transport's error.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tower::Service;

use crate::cause::Report;
use crate::error::PublishError;
use crate::inbox::Via;
use crate::topology::Region;
use crate::transport::{Outgoing, TransportError};

use super::service::{call, Call, Publish, Routed, Sent};
use super::stack::Stacks;

/// Publishes a [`Routed`] on its decision's transports, falling back per
/// gateway. No mirror here ([`super::mirror`] adds it).
#[derive(Clone)]
pub(crate) struct Fallback {
    pub stacks: Stacks,
}

impl<'a> Service<Routed<'a>> for Fallback {
    type Response = Vec<Sent>;
    type Error = Infallible;
    type Future = Call<'a, Vec<Sent>>;

    /// Always ready: each transport's stack is readied when its turn comes.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, routed: Routed<'a>) -> Call<'a, Vec<Sent>> {
        let stacks = self.stacks.clone();
        Box::pin(async move { Ok(chain(&stacks, routed).await) })
    }
}

async fn chain(stacks: &Stacks, routed: Routed<'_>) -> Vec<Sent> {
    let Routed {
        targets,
        regions,
        priority,
        decision,
    } = routed;
    if decision.transports.is_empty() {
        return (0..targets.len())
            .map(|_| Sent::failed(PublishError::NoTransport))
            .collect();
    }
    let mut taken: Vec<Option<(Via, bool)>> = vec![None; targets.len()];
    let mut errors: Vec<Vec<TransportError>> = vec![Vec::new(); targets.len()];
    // The targets no transport took yet, in order.
    let mut left: Vec<usize> = (0..targets.len()).collect();
    for &kind in &decision.transports {
        if left.is_empty() {
            break;
        }
        // All of them (the first transport, or every one failed): no copy.
        let subset: (Vec<Outgoing<'_>>, Vec<Region>) = if left.len() == targets.len() {
            Default::default()
        } else {
            left.iter()
                .map(|&i| (targets[i], regions[i].clone()))
                .unzip()
        };
        let (these, their_regions) = if left.len() == targets.len() {
            (targets, regions)
        } else {
            (&subset.0[..], &subset.1[..])
        };
        let publish = Publish {
            targets: these,
            regions: their_regions,
            priority,
            cohort: decision.cohort,
        };
        let results = match stacks.get(kind) {
            Ok(stack) => call(stack, publish).await,
            Err(err) => vec![Err(err); these.len()],
        };
        let mut failed = Vec::new();
        for (i, result) in left.into_iter().zip(results) {
            match result {
                Ok(confirmed) => taken[i] = Some((Via::Transport(kind), confirmed)),
                Err(err) => {
                    tracing::warn!(transport = %kind, gateway = %targets[i].to, err = %Report(&err), "publish failed, trying the next transport");
                    errors[i].push(err);
                    failed.push(i);
                }
            }
        }
        left = failed;
    }
    taken
        .into_iter()
        .zip(errors)
        .map(|(taken, errors)| match taken {
            Some((via, confirmed)) => Sent {
                result: Ok(via),
                confirmed,
                mirrored: None,
            },
            None => Sent::failed(PublishError::Failed(errors)),
        })
        .collect()
}
