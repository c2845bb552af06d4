//! Identifier fields of gRPC requests, checked where they enter: a
//! violation is `INVALID_ARGUMENT` naming the field and the rule.

use tonic::Status;

use crate::topology::{check, IdKind};

/// `value` if it keeps the identifier rules of `kind`, else
/// INVALID_ARGUMENT naming the field and the rule.
pub(crate) fn id<'a>(field: &'static str, kind: IdKind, value: &'a str) -> Result<&'a str, Status> {
    check(field, kind, value).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(value)
}

/// A user, group or device id of a request.
pub(crate) fn text<'a>(field: &'static str, value: &'a str) -> Result<&'a str, Status> {
    id(field, IdKind::Text, value)
}
