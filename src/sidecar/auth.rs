//! Bearer tokens: one per gateway, one for the Admin API, one for peer
//! sidecars. Read from environment variables or files named in config,
//! compared in constant time, and never logged.
//!
//! A call with a gateway token acts as that gateway only: the services check
//! that the gateway named in each request is the token's ([`authorize`]).

use std::sync::Arc;

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use super::secrets::read_secret;
use super::user_auth::UserTokens;
use super::{Shared, SidecarConfig, SidecarError};
use crate::cause::Report;
use crate::router::Router;
use crate::topology::{GatewayId, UserId};

/// The resolved secrets.
#[derive(Default)]
pub struct Tokens {
    gateways: Vec<(GatewayId, String)>,
    admin: Option<String>,
    /// Presented to and expected from peer sidecars.
    pub(crate) peer: Option<String>,
    /// Verifies the user tokens `Online` carries, when configured.
    users: Option<UserTokens>,
}

impl Tokens {
    /// Reads every secret the config names.
    pub fn resolve(config: &SidecarConfig) -> Result<Self, SidecarError> {
        let mut gateways = Vec::new();
        for (gateway, source) in &config.tokens {
            let id = gateway
                .parse::<GatewayId>()
                .map_err(|err| SidecarError::TokenKey {
                    key: format!("sidecar.tokens.{gateway}"),
                    source: err,
                })?;
            gateways.push((
                id,
                read_secret(&format!("sidecar.tokens.{gateway}"), source)?,
            ));
        }
        let admin = config
            .admin_token
            .as_ref()
            .map(|s| read_secret("sidecar.admin_token", s))
            .transpose()?;
        let peer = config
            .peer_token
            .as_ref()
            .map(|s| read_secret("sidecar.peer_token", s))
            .transpose()?;
        let users = config
            .user_tokens
            .as_ref()
            .map(UserTokens::load)
            .transpose()?;
        Ok(Self {
            gateways,
            admin,
            peer,
            users,
        })
    }
}

/// The tokens in force; swapped by a config reload (secret rotation).
pub struct Auth {
    tokens: ArcSwap<Tokens>,
}

/// The gateway a call's token belongs to, set by the gateway interceptor.
#[derive(Debug, Clone)]
pub struct Caller(pub GatewayId);

impl Auth {
    /// Starts with `tokens`.
    pub fn new(tokens: Tokens) -> Self {
        Self {
            tokens: ArcSwap::from_pointee(tokens),
        }
    }

    /// Replaces the tokens.
    pub fn replace(&self, tokens: Tokens) {
        self.tokens.store(Arc::new(tokens));
    }

    /// With `[sidecar.user_tokens]`, checks that `token` proves `user`.
    pub(crate) fn verify_user(&self, token: &str, user: &str) -> Result<(), Status> {
        match &self.tokens.load().users {
            Some(users) => users.verify(token, user),
            None => Ok(()),
        }
    }
}

/// Compares in constant time (`subtle`), so timing does not reveal how
/// much of a guessed token was right. Only the length can show.
fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn bearer<T>(request: &Request<T>) -> Result<&str, Status> {
    let value = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
    })?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("`authorization` metadata must be `Bearer <token>`"))
}

/// Gateway API: with tokens configured, a call must carry a gateway's token;
/// the gateway is recorded as the [`Caller`].
pub(crate) fn gateway_interceptor(
    shared: Arc<Shared>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let tokens = shared.auth.tokens.load();
        if tokens.gateways.is_empty() {
            return Ok(request);
        }
        let presented = bearer(&request)?;
        let gateway = tokens
            .gateways
            .iter()
            .fold(None, |found, (gateway, token)| {
                // Every token is compared, matching or not (constant time).
                if same(presented, token) {
                    Some(gateway.clone())
                } else {
                    found
                }
            })
            .ok_or_else(|| Status::unauthenticated("unknown gateway token"))?;
        request.extensions_mut().insert(Caller(gateway));
        Ok(request)
    }
}

/// Admin API: the admin token when configured.
pub(crate) fn admin_interceptor(
    shared: Arc<Shared>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        check_secret(
            &request,
            shared.auth.tokens.load().admin.as_deref(),
            "admin",
        )?;
        Ok(request)
    }
}

/// Peer API: the peer token when configured. With gateway tokens set and no
/// peer token the API is closed: a Peer link delivers as any sender to any
/// gateway, so it is never open where the Gateway API is not.
pub(crate) fn peer_interceptor(
    shared: Arc<Shared>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        let tokens = shared.auth.tokens.load();
        if tokens.peer.is_none() && !tokens.gateways.is_empty() {
            return Err(Status::unauthenticated(
                "the Peer API is closed: gateway tokens are set and sidecar.peer_token is not",
            ));
        }
        check_secret(&request, tokens.peer.as_deref(), "peer")?;
        Ok(request)
    }
}

fn check_secret<T>(request: &Request<T>, expected: Option<&str>, what: &str) -> Result<(), Status> {
    let Some(expected) = expected else {
        return Ok(());
    };
    if same(bearer(request)?, expected) {
        Ok(())
    } else {
        Err(Status::unauthenticated(format!("wrong {what} token")))
    }
}

/// Checks that the call may act as `gateway`: its token is that gateway's
/// (or no tokens are configured).
pub fn authorize<T>(request: &Request<T>, gateway: &str) -> Result<GatewayId, Status> {
    let gateway: GatewayId = super::fields::id("gateway_id", gateway)?;
    match request.extensions().get::<Caller>() {
        Some(Caller(caller)) if *caller != gateway => Err(Status::permission_denied(format!(
            "the token of gateway {caller:?} cannot act as gateway {gateway:?}"
        ))),
        _ => Ok(gateway),
    }
}

/// Refuses unless `user` has a session on the router's gateway.
pub(super) async fn hosted(router: &Router, user: &UserId) -> Result<(), Status> {
    let me = &router.gateway().id;
    let sessions = router
        .backends()
        .presence
        .locate_shared(user)
        .await
        .map_err(|e| Status::unavailable(Report(&e).to_string()))?;
    if sessions.iter().any(|s| &s.gateway == me) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "user {user:?} has no session on gateway {me:?}: a gateway acts only for the users it hosts"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sidecar::SecretSource;

    #[test]
    fn constant_time_compare_is_still_a_compare() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }

    #[test]
    fn a_missing_secret_names_the_key_and_source_not_a_value() {
        let config = SidecarConfig {
            admin_token: Some(SecretSource {
                env: Some("SWITCHYARD_TEST_SURELY_UNSET_VAR".into()),
                file: None,
            }),
            ..SidecarConfig::default()
        };
        let err = Tokens::resolve(&config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("sidecar.admin_token: cannot read the secret from env SWITCHYARD_TEST_SURELY_UNSET_VAR"),
            "{err}"
        );
    }
}
