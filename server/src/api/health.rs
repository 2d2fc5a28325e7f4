//! `GET /healthz` (the process runs) and `GET /readyz` (the engine answers
//! and every background task runs).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiError;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

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
