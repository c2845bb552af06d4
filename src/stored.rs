//! What a store hands back, checked like anything else that comes in: a
//! stored id that breaks its rule (written by hand, or by another tool) is
//! skipped, counted in `switchyard_store_malformed_total` and logged, so it
//! can neither reach a key or subject nor make the rest of a read fail.

use std::str::FromStr;

use crate::cause::Report;
use crate::telemetry;
use crate::topology::IdError;

/// `value`, read from `store`, as the id it holds, or `None` (counted and
/// logged) if it breaks the rule.
pub(crate) fn id<T: FromStr<Err = IdError>>(store: &'static str, value: &str) -> Option<T> {
    match value.parse() {
        Ok(id) => Some(id),
        Err(err) => {
            metrics::counter!(telemetry::STORE_MALFORMED, "store" => store).increment(1);
            tracing::warn!(store, err = %Report(&err), "skipping a stored id that breaks its rule");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::UserId;

    #[test]
    fn a_stored_id_that_breaks_its_rule_is_skipped() {
        assert_eq!(id::<UserId>("test", "bob\u{1}"), None);
        assert_eq!(id::<UserId>("test", "bob"), Some("bob".into()));
    }
}
