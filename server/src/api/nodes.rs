//! `GET /api/nodes`: the live nodes of the cluster, as the engine knows
//! them (the memory engine has only this one).

use axum::Json;
use axum::extract::State;

use super::ServiceCaller;
use crate::engine::NodeInfo;
use crate::error::ApiError;
use crate::state::AppState;

/// The live nodes of the cluster.
#[utoipa::path(
    get,
    path = "/api/nodes",
    tag = "admin",
    responses(
        (status = 200, description = "The live nodes", body = Vec<NodeInfo>),
        (status = 401, description = "No token, or one that does not verify", body = super::openapi::ErrorBody),
        (status = 403, description = "Not a service or admin token", body = super::openapi::ErrorBody),
        (status = 503, description = "The engine is unreachable", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn nodes(
    State(state): State<AppState>,
    ServiceCaller(_caller): ServiceCaller,
) -> Result<Json<Vec<NodeInfo>>, ApiError> {
    Ok(Json(state.engine.nodes(state.node_info()).await?))
}
