//! `POST /api/disconnect`: close every connection of a user at once (a user
//! removed from an org), without waiting for the token to expire; with
//! `"revoke": true`, also refuse the user's tokens issued until now for
//! `--revocation-ttl`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use serde::Deserialize;

use super::{ServiceCaller, parse_json, read_body};
use crate::auth::unix_now_f64;
use crate::error::ApiError;
use crate::hub::CloseReason;
use crate::protocol::unix_to_rfc3339;
use crate::protocol::{IdValue, UserId, close};
use crate::state::AppState;
use hrrt_protocol::api::Disconnected;

/// A WebSocket close reason is at most 123 bytes.
pub const MAX_REASON_BYTES: usize = 123;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DisconnectIn {
    #[schema(value_type = super::openapi::Id)]
    user_id: IdValue,
    /// The close reason the user's connections get (default
    /// `disconnected`).
    #[schema(max_length = 123)]
    reason: Option<String>,
    /// Also refuse the user's tokens issued until now, for
    /// --revocation-ttl.
    #[serde(default)]
    revoke: bool,
}

/// Closes every connection of a user (1008), optionally revoking their
/// tokens.
#[utoipa::path(
    post,
    path = "/api/disconnect",
    tag = "admin",
    request_body = DisconnectIn,
    responses(
        (status = 200, description = "Closed", body = Disconnected),
        (status = 400, description = "Not JSON, or a bad user id or reason", body = super::openapi::ErrorBody),
        (status = 401, description = "No token, or one that does not verify", body = super::openapi::ErrorBody),
        (status = 403, description = "Not a service or admin token", body = super::openapi::ErrorBody),
        (status = 408, description = "The body did not arrive within --handshake-timeout", body = super::openapi::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = super::openapi::ErrorBody),
        (status = 503, description = "The engine is unreachable (revoke)", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn disconnect(
    State(state): State<AppState>,
    ServiceCaller(caller): ServiceCaller,
    body: Body,
) -> Result<Json<Disconnected>, ApiError> {
    let input: DisconnectIn = parse_json(&read_body(&state, body, 64 << 10).await?)?;
    let user = UserId::new(&input.user_id.into_string())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let reason = input.reason.unwrap_or_else(|| "disconnected".to_owned());
    if reason.len() > MAX_REASON_BYTES {
        return Err(ApiError::bad_request(format!(
            "reason is over {MAX_REASON_BYTES} bytes (the WebSocket limit)"
        )));
    }
    let mut tokens_valid_from = None;
    if input.revoke {
        // Tokens with `iat` up to the skew ahead pass verification, so the
        // revocation reaches that far too: one minted on a clock that runs
        // ahead, just before the revoke, is refused like the others.
        let cutoff = revocation_cutoff(unix_now_f64(), state.config.clock_skew);
        // Recorded before the close: a tab that registers after the close
        // below re-checks revocation and is refused (session setup).
        state
            .engine
            .revoke(&user, cutoff, state.config.revocation_ttl)
            .await?;
        tokens_valid_from = Some(unix_to_rfc3339(cutoff.saturating_add(1)));
    }
    let here = state.hub.close_user(
        &user,
        &CloseReason {
            code: close::POLICY,
            reason: reason.clone().into(),
        },
    );
    // The other nodes (Redis engine), summed over those that answer in 1 s.
    // This node's tabs are closed already: with the others out of reach the
    // answer is what was closed (none of them answered), not an error.
    let elsewhere = match state.engine.disconnect_elsewhere(&user, &reason).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(user = %user, error = %e, "disconnect not told to the other nodes");
            0
        }
    };
    let closed = here + elsewhere;
    tracing::info!(user = %user, closed, revoked = input.revoke, by = %caller.user, "disconnected user");
    Ok(Json(Disconnected {
        closed,
        tokens_valid_from,
    }))
}

/// The last whole second whose tokens a revocation at `now` (UNIX seconds)
/// refuses: `now` plus the clock skew, rounded down. A token is accepted
/// again from the next second on.
fn revocation_cutoff(now: f64, skew: std::time::Duration) -> u64 {
    let at = (now + skew.as_secs_f64()).floor();
    if at.is_finite() && at >= 0.0 {
        (at as u64).min(crate::auth::MAX_TIMESTAMP)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_cutoff_is_the_skew_after_the_revocation_in_whole_seconds() {
        assert_eq!(revocation_cutoff(100.3, Duration::from_secs(5)), 105);
        assert_eq!(revocation_cutoff(100.0, Duration::ZERO), 100);
        assert_eq!(revocation_cutoff(100.6, Duration::from_millis(500)), 101);
        assert_eq!(
            revocation_cutoff(f64::MAX, Duration::from_secs(5)),
            crate::auth::MAX_TIMESTAMP
        );
    }
}
