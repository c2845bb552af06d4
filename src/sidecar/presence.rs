//! The Gateway API's presence and group queries: `Presence`, `Watch`,
//! `GroupMembers`, `UserGroups`. Any attached gateway may ask about any
//! user (presence is what every node of a chat cluster shares); each id is
//! checked like every other input.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status, Streaming};

use super::fields::id;
use crate::cause::Report;
use crate::error::StoreError;
use crate::presence::watch::{Change, PresenceEvent, PresenceWatch, WatchError};
use crate::presence::{PresenceStore, Session};
use crate::proto;
use crate::router::Router;
use crate::topology::{GroupId, UserId};

/// Users per `Presence` call.
const MAX_PRESENCE_USERS: usize = 1000;
/// Users per `Watch` call.
const MAX_WATCHED: usize = 100_000;
/// Members per `GroupMembers` page.
const MAX_PAGE: usize = 1000;
/// Event batches queued per Watch stream before the watch waits.
const WATCH_QUEUE: usize = 64;

fn unavailable(err: StoreError) -> Status {
    Status::unavailable(Report(&err).to_string())
}

fn users(field: &'static str, ids: &[String]) -> Result<Vec<UserId>, Status> {
    ids.iter().map(|u| id(field, u)).collect()
}

fn session_info(s: &Session) -> proto::SessionInfo {
    proto::SessionInfo {
        device: s.device.to_string(),
        gateway: s.gateway.to_string(),
        region: s.region.to_string(),
        since_unix_micros: s.since_micros,
    }
}

pub(crate) async fn presence(
    router: &Router,
    request: proto::PresenceRequest,
) -> Result<Response<proto::PresenceResponse>, Status> {
    if request.users.len() > MAX_PRESENCE_USERS {
        return Err(Status::invalid_argument(format!(
            "users: {} asked, at most {MAX_PRESENCE_USERS} per call",
            request.users.len()
        )));
    }
    let asked = users("users", &request.users)?;
    let found = router
        .backends()
        .presence
        .locate_many(&asked)
        .await
        .map_err(unavailable)?;
    let users = asked
        .into_iter()
        .zip(found)
        .map(|(user, sessions)| proto::UserPresence {
            user: user.to_string(),
            online: !sessions.is_empty(),
            sessions: sessions.iter().map(session_info).collect(),
        })
        .collect();
    Ok(Response::new(proto::PresenceResponse { users }))
}

fn event(e: PresenceEvent) -> proto::PresenceEvent {
    let (change, device) = match e.change {
        Change::Snapshot => (proto::PresenceChange::Snapshot, String::new()),
        Change::Online => (proto::PresenceChange::Online, String::new()),
        Change::Offline => (proto::PresenceChange::Offline, String::new()),
        Change::DeviceAdded(d) => (proto::PresenceChange::DeviceAdded, d.to_string()),
        Change::DeviceRemoved(d) => (proto::PresenceChange::DeviceRemoved, d.to_string()),
    };
    proto::PresenceEvent {
        user: e.user.to_string(),
        change: change as i32,
        device,
        sessions: e.sessions.iter().map(session_info).collect(),
    }
}

/// Applies one WatchMessage; returns the snapshots of the users it added.
async fn apply(
    router: &Router,
    watch: &mut PresenceWatch,
    message: proto::WatchMessage,
) -> Result<Vec<PresenceEvent>, Status> {
    watch.remove(&users("remove_users", &message.remove_users)?);
    let mut add = users("add_users", &message.add_users)?;
    for group in &message.add_groups {
        let group: GroupId = id("add_groups", group)?;
        match router.backends().directory.groups().members(&group).await {
            Ok(members) => add.extend(members),
            Err(StoreError::UnknownGroup(_)) => {}
            Err(err) => return Err(unavailable(err)),
        }
    }
    watch.add(&add).await.map_err(|err| match err {
        WatchError::TooMany(e) => Status::resource_exhausted(e.to_string()),
        WatchError::Store(e) => unavailable(e),
    })
}

/// Runs one Watch stream: the caller already read and checked the first
/// message (`first`). Ends when the gateway ends its side, the stream
/// breaks, or the sidecar drains.
pub(crate) fn watch(
    router: Router,
    first: proto::WatchMessage,
    mut messages: Streaming<proto::WatchMessage>,
    mut stopping: watch::Receiver<bool>,
) -> ReceiverStream<Result<proto::PresenceEvent, Status>> {
    let (out, events) = mpsc::channel(WATCH_QUEUE);
    tokio::spawn(async move {
        let mut watch = PresenceWatch::new(Arc::clone(&router.backends().presence), MAX_WATCHED);
        let mut next = Some(first);
        loop {
            let batch = match next.take() {
                Some(message) => apply(&router, &mut watch, message).await,
                None => tokio::select! {
                    message = messages.message() => match message {
                        Ok(Some(message)) => apply(&router, &mut watch, message).await,
                        Ok(None) | Err(_) => return,
                    },
                    changed = watch.next() => match changed {
                        Some(Ok(events)) => Ok(events),
                        Some(Err(err)) => Err(unavailable(err)),
                        None => return,
                    },
                    _ = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                        let _ = out.send(Err(Status::unavailable("the sidecar is shutting down"))).await;
                        return;
                    }
                },
            };
            let failed = batch.is_err();
            let sent = match batch {
                Ok(events) => {
                    let mut sent = true;
                    for e in events {
                        sent &= out.send(Ok(event(e))).await.is_ok();
                    }
                    sent
                }
                Err(status) => out.send(Err(status)).await.is_ok(),
            };
            if failed || !sent {
                return;
            }
        }
    });
    ReceiverStream::new(events)
}

pub(crate) async fn group_members(
    router: &Router,
    request: proto::GroupMembersRequest,
) -> Result<Response<proto::GroupMembersResponse>, Status> {
    let group: GroupId = id("group", &request.group)?;
    let limit = match request.limit as usize {
        0 => MAX_PAGE,
        n => n.min(MAX_PAGE),
    };
    let groups = router.backends().directory.groups();
    let (members, online) = match groups.members(&group).await {
        Ok(members) => {
            let online = groups.distribution(&group).await.map_err(unavailable)?;
            (members, online.iter().map(|(_, n)| n).sum::<u64>())
        }
        Err(StoreError::UnknownGroup(_)) => (Vec::new(), 0),
        Err(err) => return Err(unavailable(err)),
    };
    let total = members.len() as u64;
    let sorted: BTreeSet<UserId> = members.into_iter().collect();
    let mut page = Vec::with_capacity(limit);
    // The cursor is the last id of the page before ("" for the first): any
    // text, compared as ids are ordered.
    let mut rest = sorted
        .into_iter()
        .filter(|m| m.as_str() > request.after.as_str())
        .peekable();
    let mut examined = None;
    let me = &router.gateway().id;
    while page.len() < limit {
        // Hosted-only pages are filtered in chunks, one batched lookup each.
        let chunk: Vec<UserId> = rest.by_ref().take(limit - page.len()).collect();
        let Some(last) = chunk.last() else { break };
        examined = Some(last.clone());
        if request.hosted_only {
            let found = router
                .backends()
                .presence
                .locate_many(&chunk)
                .await
                .map_err(unavailable)?;
            page.extend(
                chunk
                    .into_iter()
                    .zip(found)
                    .filter(|(_, sessions)| sessions.iter().any(|s| &s.gateway == me))
                    .map(|(member, _)| member),
            );
        } else {
            page.extend(chunk);
        }
    }
    let next_after = match (rest.peek(), examined) {
        (Some(_), Some(last)) => last.to_string(),
        _ => String::new(),
    };
    Ok(Response::new(proto::GroupMembersResponse {
        members: page.iter().map(UserId::to_string).collect(),
        next_after,
        total_members: total,
        online_members: online,
    }))
}

pub(crate) async fn user_groups(
    router: &Router,
    request: proto::UserGroupsRequest,
) -> Result<Response<proto::UserGroupsResponse>, Status> {
    let user: UserId = id("user", &request.user)?;
    let groups: BTreeSet<GroupId> = router
        .backends()
        .directory
        .groups()
        .groups_of(&user)
        .await
        .map_err(unavailable)?
        .into_iter()
        .collect();
    Ok(Response::new(proto::UserGroupsResponse {
        groups: groups.iter().map(GroupId::to_string).collect(),
    }))
}
