//! `GET /api/stats`: what this node is doing, as JSON.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;

use super::ServiceCaller;
use crate::state::AppState;
use hrrt_protocol::api::{Connections, Events, Settings, Stats};

/// What this node is doing.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "admin",
    responses(
        (status = 200, description = "This node's figures", body = Stats),
        (status = 401, description = "No token, or one that does not verify", body = super::openapi::ErrorBody),
        (status = 403, description = "Not a service or admin token", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn stats(
    State(state): State<AppState>,
    ServiceCaller(_caller): ServiceCaller,
) -> Json<Stats> {
    let census = state.hub.census();
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let config = &state.config;
    let by_type = state.metrics.by_type();
    let published: BTreeMap<String, u64> = by_type
        .iter()
        .filter(|(_, c)| c.published > 0)
        .map(|(t, c)| (t.clone(), c.published))
        .collect();
    let delivered: BTreeMap<String, u64> = by_type
        .iter()
        .filter(|(_, c)| c.delivered > 0)
        .map(|(t, c)| (t.clone(), c.delivered))
        .collect();
    Json(Stats {
        node_id: state.node_id.clone(),
        engine: state.engine.kind().to_owned(),
        epoch: state.engine.epoch().to_string(),
        uptime_seconds: state.started.elapsed().as_secs(),
        connections: Connections {
            total: census.by_org.values().sum::<usize>() + census.watchers,
            by_org: census
                .by_org
                .into_iter()
                .map(|(o, n)| (o.to_string(), n))
                .collect(),
            watchers: census.watchers,
        },
        users: census.users,
        events: Events {
            published_total: published.values().sum(),
            delivered_total: delivered.values().sum(),
            published,
            delivered,
        },
        slow_consumer_closes: state.metrics.slow_consumer_closes(),
        closes: state
            .metrics
            .closes_by_code()
            .into_iter()
            .map(|(code, n)| (code.to_string(), n))
            .collect(),
        history_events: state.engine.retained_events(),
        settings: Settings {
            token_check_interval_ms: ms(config.token_check_interval),
            ping_interval_ms: ms(config.ping_interval),
            clock_skew_ms: ms(config.clock_skew),
            history_size: config.history_size,
            history_ttl_ms: ms(config.history_ttl),
        },
    })
}
