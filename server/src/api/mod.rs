//! The HTTP API: publish, history, health. Every error is an [`ApiError`]
//! with a JSON body.

pub mod health;
pub mod history;
pub mod publish;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::app::AppState;
use crate::auth::{AuthError, Identity, Role};
use crate::error::ApiError;
use crate::session::bearer;

/// A caller of the service APIs: a verified `service` or `admin` token from
/// `Authorization: Bearer`.
#[derive(Debug)]
pub struct ServiceCaller(pub Identity);

impl FromRequestParts<AppState> for ServiceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("missing token: send Authorization: Bearer <service token>")
        })?;
        let identity = state.verifier.verify(token).map_err(|e| match e {
            AuthError::Expired => ApiError::unauthorized("token expired"),
            _ => ApiError::unauthorized("invalid token"),
        })?;
        match identity.role {
            Role::Service | Role::Admin => Ok(Self(identity)),
            Role::User => Err(ApiError::forbidden(
                "this endpoint needs a service or admin token \
                 (mint one with: hrrt token mint --role service --user backend)",
            )),
        }
    }
}
