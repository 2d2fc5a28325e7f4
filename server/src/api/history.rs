//! `GET /api/history?channel=org:7&since=40&limit=100`: retained events
//! after `since`, oldest first.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ServiceCaller;
use crate::error::ApiError;
use crate::protocol::ChannelName;
use crate::state::AppState;
use hrrt_protocol::api::HistoryAnswer;

/// The page size when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// `org:<id>` or `user:<id>` (required).
    pub channel: Option<String>,
    /// Events after this seq (default 0: everything retained).
    pub since: Option<u64>,
    /// At most this many events (default 100, at most --history-size).
    pub limit: Option<usize>,
}

/// Retained events of a channel after `since`, oldest first.
#[utoipa::path(
    get,
    path = "/api/history",
    tag = "admin",
    params(HistoryParams),
    responses(
        (status = 200, description = "A page of history", body = HistoryAnswer),
        (status = 400, description = "A missing or malformed parameter", body = super::openapi::ErrorBody),
        (status = 401, description = "No token, or one that does not verify", body = super::openapi::ErrorBody),
        (status = 403, description = "Not a service or admin token", body = super::openapi::ErrorBody),
        (status = 503, description = "The engine is unreachable", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn history(
    State(state): State<AppState>,
    ServiceCaller(_caller): ServiceCaller,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<HistoryAnswer>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let channel = params
        .channel
        .ok_or_else(|| ApiError::bad_request("missing channel, e.g. ?channel=org:7"))?;
    let channel = ChannelName::parse(&channel).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let max = usize::try_from(state.config.history_size).unwrap_or(usize::MAX);
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT).min(max);
    let page = state
        .engine
        .history(&channel, params.since.unwrap_or(0), limit)
        .await?;
    let events = page
        .events
        .iter()
        .map(|p| RawValue::from_string(p.frame.as_str().to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::unavailable(format!("stored event is not JSON: {e}")))?;
    Ok(Json(HistoryAnswer {
        channel,
        epoch: state.engine.epoch().to_string(),
        oldest: page.oldest,
        latest: page.latest,
        events,
    }))
}
