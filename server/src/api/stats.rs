//! `GET /api/stats`: what this node is doing, as JSON.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::ServiceCaller;
use crate::app::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub node_id: String,
    /// `memory` or `redis`.
    #[schema(value_type = String)]
    pub engine: &'static str,
    pub epoch: String,
    pub uptime_seconds: u64,
    pub connections: Connections,
    /// Distinct users with at least one connection.
    pub users: usize,
    pub events: Events,
    /// Connections closed with 1013 because their send queue was full.
    pub slow_consumer_closes: u64,
    /// Closes by code, either side.
    pub closes: BTreeMap<String, u64>,
    /// Events held in history by the engine.
    pub history_events: u64,
    /// The node's settings a client's behaviour depends on (a scenario
    /// waits for the token check it needs, say).
    pub settings: Settings,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Connections {
    /// Every WebSocket connection, watchers included.
    pub total: usize,
    /// Per org, watchers left out.
    pub by_org: BTreeMap<String, usize>,
    /// Admin watch connections (`orgs=`, such as `hrrt dash`).
    pub watchers: usize,
}

/// Flags of this node, in milliseconds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Settings {
    /// `--token-check-interval`: how often token expiry is checked.
    pub token_check_interval_ms: u64,
    /// `--ping-interval`.
    pub ping_interval_ms: u64,
    /// `--clock-skew`.
    pub clock_skew_ms: u64,
    /// `--history-size`.
    pub history_size: u64,
    /// `--history-ttl`.
    pub history_ttl_ms: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Events {
    /// Events published through this node, per type.
    pub published: BTreeMap<String, u64>,
    /// Event frames handed to this node's connections, per type.
    pub delivered: BTreeMap<String, u64>,
    pub published_total: u64,
    pub delivered_total: u64,
}

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
        engine: state.engine.kind(),
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
