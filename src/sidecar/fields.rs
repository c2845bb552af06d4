//! Identifier fields of gRPC requests, made where they enter: a
//! violation is `INVALID_ARGUMENT` naming the field and the rule.

use tonic::Status;

use crate::topology::Id;

/// `value`, the request field `field`, as the id it holds, else
/// INVALID_ARGUMENT naming the field and the rule.
pub(crate) fn id<T: Id>(field: &'static str, value: &str) -> Result<T, Status> {
    T::parse(field, value).map_err(|e| Status::invalid_argument(e.to_string()))
}
