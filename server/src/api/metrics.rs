//! `GET /metrics`: Prometheus scrape endpoint (OpenMetrics text format).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// Prometheus scrape (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "OpenMetrics text", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let census = state.hub.census();
    let by_org: Vec<(&str, usize)> = census
        .by_org
        .iter()
        .map(|(o, n)| (o.as_str(), *n))
        .collect();
    let retained = state.engine.retained_events();
    state.metrics.set_watchers(census.watchers);
    let body = state.metrics.scrape(retained, &by_org).map_err(|e| {
        tracing::error!(error = %e, "encoding metrics failed");
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "encoding metrics failed",
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
