//! The HTTP API: publish, history, health. Every error is an [`ApiError`]
//! with a JSON body.

pub mod disconnect;
pub mod health;
pub mod history;
pub mod limit;
pub mod metrics;
pub mod nodes;
pub mod openapi;
pub mod publish;
pub mod stats;

use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::auth::bearer;
use crate::auth::{Identity, Role};
use crate::error::ApiError;
use crate::state::AppState;

/// Reads a request body of at most `limit` bytes (413 over it) within
/// `--handshake-timeout` (408 past it): a publisher that sends half a body
/// and stalls must not hold a connection and its buffer for ever.
pub async fn read_body(state: &AppState, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let timeout = state.config.handshake_timeout;
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::too_large(format!(
            "request body is over {limit} bytes"
        ))),
        Err(_) => Err(ApiError::timeout(format!(
            "the request body did not arrive within {}",
            humantime::format_duration(timeout)
        ))),
    }
}

/// Parses JSON; the error names line and column.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_json(format!("invalid JSON: {e}")))
}

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
        let identity = state
            .authenticate(token)
            .map_err(|e| ApiError::unauthorized(e.detail()))?;
        match identity.role {
            Role::Service | Role::Admin => Ok(Self(identity)),
            Role::User => Err(ApiError::forbidden(
                "this endpoint needs a service or admin token \
                 (mint one with: hrrt token mint --role service --user backend)",
            )),
        }
    }
}
