//! `GET /api/history?channel=org:7&since=40&limit=100`: retained events
//! after `since`, oldest first.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ServiceCaller;
use crate::app::AppState;
use crate::error::ApiError;
use crate::protocol::ChannelName;

/// The page size when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

#[derive(Debug, Deserialize)]
pub struct HistoryParams {
    pub channel: Option<String>,
    pub since: Option<u64>,
    pub limit: Option<usize>,
}

#[derive(Serialize)]
pub struct HistoryAnswer {
    channel: ChannelName,
    epoch: String,
    /// The seq of the oldest retained event (`latest + 1` when none is).
    oldest: u64,
    latest: u64,
    /// Envelopes exactly as connections received them, oldest first.
    events: Vec<Box<RawValue>>,
}

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
