//! `GET /api/nodes`: the live nodes of the cluster, as the engine knows
//! them (the memory engine has only this one).

use axum::Json;
use axum::extract::State;

use super::ServiceCaller;
use crate::app::AppState;
use crate::engine::NodeInfo;
use crate::error::ApiError;

pub async fn nodes(
    State(state): State<AppState>,
    ServiceCaller(_caller): ServiceCaller,
) -> Result<Json<Vec<NodeInfo>>, ApiError> {
    Ok(Json(state.engine.nodes(state.node_info()).await?))
}
