//! User tokens: with `[sidecar.user_tokens]`, `Online` must carry a JWT
//! that the platform's auth service signed for that user (`sub`), so a
//! stolen gateway token cannot claim arbitrary users and read their offline
//! messages. HS256 (a shared secret) or RS256 (the auth service's public
//! key); `exp` is required and honoured.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tonic::Status;

use super::secrets::read_secret;
use super::SidecarError;
use crate::cause::Cause;

pub use crate::config::sidecar::{UserTokenAlgorithm, UserTokensConfig};

/// The claims read from a token; signature, `exp`, `iss` and `aud` are
/// checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// A loaded verifier.
pub(crate) struct UserTokens {
    key: DecodingKey,
    validation: Validation,
}

impl UserTokens {
    /// Reads the key the config names.
    pub(crate) fn load(config: &UserTokensConfig) -> Result<Self, SidecarError> {
        const KEY: &str = "sidecar.user_tokens.key";
        let secret = read_secret(KEY, &config.key)?;
        let bad_key = |reason: Cause| SidecarError::Secret {
            key: KEY.into(),
            from: "its source".into(),
            reason,
        };
        let (key, algorithm) = match config.algorithm {
            UserTokenAlgorithm::HS256 => (
                DecodingKey::from_secret(secret.as_bytes())
                    .map_err(|e| bad_key(Cause::context("not a usable HMAC secret", e)))?,
                Algorithm::HS256,
            ),
            UserTokenAlgorithm::RS256 => (
                DecodingKey::from_rsa_pem(secret.as_bytes())
                    .map_err(|e| bad_key(Cause::context("not an RSA public key in PEM", e)))?,
                Algorithm::RS256,
            ),
        };
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = config.leeway.as_secs();
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &config.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Ok(Self { key, validation })
    }

    /// Accepts `token` only if it is valid now and names `user`.
    pub(crate) fn verify(&self, token: &str, user: &str) -> Result<(), Status> {
        if token.is_empty() {
            return Err(Status::unauthenticated(
                "user_token is required: this sidecar checks [sidecar.user_tokens]",
            ));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| Status::unauthenticated(format!("user_token rejected: {e}")))?
            .claims;
        if claims.sub != user {
            return Err(Status::permission_denied(format!(
                "user_token is for user {:?}, not {user:?}",
                claims.sub
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sidecar::SecretSource;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde::Serialize;

    #[derive(Serialize)]
    struct Token<'a> {
        sub: &'a str,
        exp: u64,
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn sign(sub: &str, exp: u64) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &Token { sub, exp },
            &EncodingKey::from_secret(b"s3cret").expect("a key"),
        )
        .expect("signs")
    }

    fn verifier() -> UserTokens {
        std::env::set_var("SWITCHYARD_TEST_USER_TOKEN_KEY", "s3cret");
        UserTokens::load(&UserTokensConfig {
            algorithm: UserTokenAlgorithm::HS256,
            key: SecretSource {
                env: Some("SWITCHYARD_TEST_USER_TOKEN_KEY".into()),
                file: None,
            },
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
        })
        .expect("loads")
    }

    #[test]
    fn a_token_proves_one_user_until_it_expires() {
        let users = verifier();
        assert!(users.verify(&sign("alice", now() + 60), "alice").is_ok());
        let other = users.verify(&sign("alice", now() + 60), "bob").unwrap_err();
        assert_eq!(other.code(), tonic::Code::PermissionDenied);
        let expired = users
            .verify(&sign("alice", now() - 60), "alice")
            .unwrap_err();
        assert_eq!(expired.code(), tonic::Code::Unauthenticated);
        assert!(
            expired.message().contains("ExpiredSignature"),
            "{}",
            expired.message()
        );
        let missing = users.verify("", "alice").unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &Token {
                sub: "alice",
                exp: now() + 60,
            },
            &EncodingKey::from_secret(b"guess").expect("a key"),
        )
        .expect("signs");
        let err = verifier().verify(&forged, "alice").unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
}
