//! Reading the secrets `[sidecar]` names (tokens, keys) from the
//! environment or files; errors name the key and the source, never the
//! value.

use super::{SecretSource, SidecarError};
use crate::cause::Cause;

/// Reads one secret (surrounding whitespace trimmed); the error names the
/// key and the source, never the value.
pub(crate) fn read_secret(key: &str, source: &SecretSource) -> Result<String, SidecarError> {
    let fail = |from: String, reason: Cause| SidecarError::Secret {
        key: key.to_owned(),
        from,
        reason,
    };
    let secret = match (&source.env, &source.file) {
        (Some(name), _) => {
            std::env::var(name).map_err(|e| fail(format!("env {name}"), Cause::new(e)))?
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| fail(format!("file {}", path.display()), Cause::new(e)))?,
        (None, None) => {
            return Err(fail(
                "nowhere".into(),
                Cause::from_message("set `env` or `file`"),
            ))
        }
    };
    let secret = secret.trim().to_owned();
    if secret.is_empty() {
        let from = source
            .env
            .as_ref()
            .map(|n| format!("env {n}"))
            .or_else(|| {
                source
                    .file
                    .as_ref()
                    .map(|p| format!("file {}", p.display()))
            })
            .unwrap_or_default();
        return Err(fail(from, Cause::from_message("the secret is empty")));
    }
    Ok(secret)
}
