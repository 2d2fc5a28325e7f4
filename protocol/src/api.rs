//! The answers of hrrt's HTTP API, as types: the server returns them, the
//! CLI, the dashboard and tests read them, and the OpenAPI document is
//! derived from them (with the `openapi` feature), so the three cannot
//! drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::ChannelName;

/// `GET /api/stats`: what one node is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stats {
    pub node_id: String,
    /// `memory` or `redis`.
    pub engine: String,
    pub epoch: String,
    pub uptime_seconds: u64,
    pub connections: Connections,
    /// Distinct users with at least one connection (watchers left out).
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Connections {
    /// Every WebSocket connection, watchers included.
    pub total: usize,
    /// Per org, watchers left out.
    pub by_org: BTreeMap<String, usize>,
    /// Admin watch connections (`orgs=`, such as `hrrt dash`).
    #[serde(default)]
    pub watchers: usize,
}

/// Flags of the node, durations in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Events {
    /// Events published through this node, per type.
    pub published: BTreeMap<String, u64>,
    /// Event frames handed to this node's connections, per type.
    pub delivered: BTreeMap<String, u64>,
    pub published_total: u64,
    pub delivered_total: u64,
}

/// One live node, as `GET /api/nodes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeInfo {
    pub node_id: String,
    /// `memory` or `redis`.
    pub engine: String,
    pub connections: usize,
    pub users: usize,
    pub uptime_s: u64,
    /// When the node last said it was alive (RFC 3339).
    pub last_seen: String,
    /// Event frames handed to this node's connections since it started
    /// (the dashboard's events/s per node).
    #[serde(default)]
    pub delivered_total: u64,
}

/// The answer to one published event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishAck {
    /// `org:<id>` or `user:<id>`.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "org:7"))]
    pub channel: ChannelName,
    pub seq: u64,
    /// Connections the event was handed to.
    pub recipients: usize,
    /// The idempotency key was used before on this channel (or for this
    /// batch): this is the first publish's answer, and nothing was
    /// published now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `GET /api/history`: a page of a channel's retained events.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryAnswer {
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "org:7"))]
    pub channel: ChannelName,
    pub epoch: String,
    /// The seq of the oldest retained event (`latest + 1` when none is).
    pub oldest: u64,
    pub latest: u64,
    /// Envelopes exactly as connections received them, oldest first.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub events: Vec<Box<RawValue>>,
}

/// `POST /api/disconnect`: what was closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Disconnected {
    /// Connections closed.
    pub closed: usize,
    /// With `revoke`: the first moment (RFC 3339, a whole second) from
    /// which a token's `iat` is accepted again. Tokens issued before it,
    /// or without `iat`, are refused for --revocation-ttl. It lies
    /// --clock-skew after the revocation, so that a token minted on a
    /// clock that runs ahead cannot dodge it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_valid_from: Option<String>,
}

/// Every error answer: a stable `code` for programs and a `message` for
/// people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// `bad_json`, `bad_event`, `bad_request`, `unauthorized`, `forbidden`,
    /// `too_large`, `rate_limited`, `idempotency_table_full`, `timeout`,
    /// `not_found`, `method_not_allowed` or `unavailable`.
    #[cfg_attr(feature = "openapi", schema(example = "bad_event"))]
    pub code: String,
    pub message: String,
}

/// `GET /healthz`: the process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Healthy {
    #[cfg_attr(feature = "openapi", schema(example = "ok"))]
    pub status: String,
}

/// `GET /readyz` when ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ready {
    #[cfg_attr(feature = "openapi", schema(example = "ready"))]
    pub status: String,
    /// `memory` or `redis`.
    pub engine: String,
}

/// The answer to a publish: one ack, or one per event of a batch, in
/// order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum PublishAnswer {
    One(PublishAck),
    Batch(Vec<PublishAck>),
}

impl PublishAnswer {
    /// The acks, one per event.
    pub fn into_acks(self) -> Vec<PublishAck> {
        match self {
            Self::One(ack) => vec![ack],
            Self::Batch(acks) => acks,
        }
    }
}
