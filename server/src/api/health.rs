//! `GET /healthz` (the process runs) and `GET /readyz` (the engine answers
//! and every background task runs).

use axum::Json;
use axum::extract::State;
use hrrt_protocol::api::{Healthy, Ready};

use crate::error::ApiError;
use crate::state::AppState;

/// The process runs.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "Running", body = super::openapi::Healthy)))]
pub async fn healthz() -> Json<Healthy> {
    Json(Healthy {
        status: "ok".to_owned(),
    })
}

/// The engine answers and every background task runs.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses(
        (status = 200, description = "Ready", body = super::openapi::Ready),
        (status = 503, description = "The engine or a background task is down", body = super::openapi::ErrorBody),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if let Some(task) = state.tasks.first_down() {
        return Err(ApiError::unavailable(format!(
            "the background task '{task}' stopped and is being restarted"
        )));
    }
    if state.engine.ready().await {
        Ok(Json(Ready {
            status: "ready".to_owned(),
            engine: state.engine.kind().to_owned(),
        }))
    } else {
        Err(ApiError::unavailable(format!(
            "the {} engine is not reachable",
            state.engine.kind()
        )))
    }
}
