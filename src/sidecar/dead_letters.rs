//! The Admin API's dead-letter calls: request checks and conversion around
//! [`crate::offline::dead_letters`].

use tonic::Status;

use crate::backends::Backends;
use crate::cause::Report;
use crate::envelope::MessageId;
use crate::error::StoreError;
use crate::offline::{dead_letters, Letters};
use crate::proto;
use crate::topology::UserId;

/// Letters listed when the request names no limit.
const DEFAULT_LIMIT: u32 = 100;
/// The most listed in one call.
const MAX_LIMIT: u32 = 10_000;

fn unavailable(err: StoreError) -> Status {
    Status::unavailable(Report(&err).to_string())
}

fn user(user: &str) -> Result<UserId, Status> {
    super::fields::id("user", user)
}

/// The ids named, parsed; none means every letter.
fn ids(message_ids: &[String]) -> Result<Vec<MessageId>, Status> {
    message_ids
        .iter()
        .map(|id| {
            id.parse().map_err(|e| {
                Status::invalid_argument(format!("message_ids: {id:?} is not a ULID: {e}"))
            })
        })
        .collect()
}

fn which(ids: &[MessageId]) -> Letters<'_> {
    if ids.is_empty() {
        Letters::All
    } else {
        Letters::Ids(ids)
    }
}

/// `DeadLetters`: the users with some, or one user's.
pub(super) async fn list(
    backends: &Backends,
    who: &str,
    limit: u32,
) -> Result<proto::DeadLettersResponse, Status> {
    let limit = match limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    } as usize;
    let offline = &backends.offline;
    if who.is_empty() {
        let users = offline
            .dead_letter_users(limit)
            .await
            .map_err(unavailable)?;
        return Ok(proto::DeadLettersResponse {
            users: users
                .into_iter()
                .map(|(user, count)| proto::DeadLetterCount {
                    user: user.to_string(),
                    count: count as u64,
                })
                .collect(),
            letters: Vec::new(),
        });
    }
    let letters = offline
        .dead_letter_entries(&user(who)?, limit)
        .await
        .map_err(unavailable)?;
    Ok(proto::DeadLettersResponse {
        users: Vec::new(),
        letters: letters
            .into_iter()
            .map(|l| proto::DeadLetter {
                message_id: l.id,
                reason: l.reason.as_str().into(),
                detail: l.detail,
                dead_at_unix_micros: l.dead_at_micros,
                envelope: l.envelope.map(|e| e.to_wire()),
            })
            .collect(),
    })
}

/// `ReplayDeadLetters`.
pub(super) async fn replay(
    backends: &Backends,
    who: &str,
    message_ids: &[String],
) -> Result<proto::ReplayDeadLettersResponse, Status> {
    let (user, ids) = (user(who)?, ids(message_ids)?);
    let replayed = dead_letters::replay(backends, &user, which(&ids))
        .await
        .map_err(unavailable)?;
    Ok(proto::ReplayDeadLettersResponse {
        replayed: replayed.restored as u64,
        flagged_gateways: replayed.flagged.iter().map(ToString::to_string).collect(),
    })
}

/// `PurgeDeadLetters`.
pub(super) async fn purge(
    backends: &Backends,
    who: &str,
    message_ids: &[String],
) -> Result<proto::PurgeDeadLettersResponse, Status> {
    let (user, ids) = (user(who)?, ids(message_ids)?);
    let purged = dead_letters::purge(backends.offline.as_ref(), &user, which(&ids))
        .await
        .map_err(unavailable)?;
    Ok(proto::PurgeDeadLettersResponse {
        purged: purged as u64,
    })
}
