//! `GET /healthz` (the process runs) and `GET /readyz` (the engine answers
//! and every background task runs).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiError;

/// The process runs.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "Running", body = super::openapi::Healthy)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The engine answers and every background task runs.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses(
        (status = 200, description = "Ready", body = super::openapi::Ready),
        (status = 503, description = "The engine or a background task is down", body = super::openapi::ErrorBody),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if let Some(task) = state.tasks.first_down() {
        return Err(ApiError::unavailable(format!(
            "the background task '{task}' stopped and is being restarted"
        )));
    }
    if state.engine.ready().await {
        Ok(Json(
            json!({"status": "ready", "engine": state.engine.kind()}),
        ))
    } else {
        Err(ApiError::unavailable(format!(
            "the {} engine is not reachable",
            state.engine.kind()
        )))
    }
}
