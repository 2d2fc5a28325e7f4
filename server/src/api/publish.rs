//! `POST /api/events`: publish one event or a batch.
//!
//! A batch is validated whole before any event of it is published, so a bad
//! event anywhere publishes nothing.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ServiceCaller, parse_json, read_body};
use crate::engine::NewEvent;
use crate::error::ApiError;
use crate::protocol::{
    self, ChannelKind, ChannelName, EventType, IdValue, OrgId, UserId, seed_target,
};
use crate::state::AppState;
use hrrt_protocol::api::PublishAnswer;

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// The most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 1000;

/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// One event as a publisher sends it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventIn {
    /// Dotted lower-case words, e.g. `entity.created`.
    #[serde(rename = "type")]
    #[schema(
        example = "entity.created",
        max_length = 128,
        pattern = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"
    )]
    kind: String,
    /// The org whose every connection gets the event (give this or
    /// `user_id`).
    #[schema(value_type = Option<super::openapi::Id>)]
    org_id: Option<IdValue>,
    /// The user whose connections get the event.
    #[schema(value_type = Option<super::openapi::Id>)]
    user_id: Option<IdValue>,
    /// Any JSON, delivered as sent.
    #[schema(value_type = Option<Object>)]
    payload: Option<Box<RawValue>>,
    /// A retry with the same key on the same channel publishes once.
    #[schema(max_length = 128)]
    idempotency_key: Option<String>,
}

/// A batch under one idempotency key: a retry of the whole batch publishes
/// nothing again and answers the first answers.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyedBatchIn {
    /// One key for the batch: it takes one slot of `--idempotency-keys`.
    #[schema(max_length = 128)]
    idempotency_key: String,
    /// The events, published all or nothing, in order.
    events: Vec<EventIn>,
}

/// What a publish request holds, validated whole.
#[derive(Debug)]
pub struct Batch {
    pub events: Vec<NewEvent>,
    /// Whether the body was a batch (answered with an array).
    pub is_batch: bool,
    /// The batch's own idempotency key (`{"idempotency_key", "events"}`).
    pub batch_key: Option<String>,
}

/// Parses and validates a `POST /api/events` body: one event object, an
/// array of them, or `{"idempotency_key": K, "events": [...]}`. Any bad
/// event fails the whole body. Pure, for the fuzzer.
pub fn parse_events(body: &[u8], max_payload: usize) -> Result<Batch, ApiError> {
    let is_batch = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[');
    // A keyed batch is an object with a top-level `events`; an event has
    // none, though its payload may. Only bodies that mention `"events"`
    // pay for the second parse, and an event's own error is the one told.
    let keyed = if is_batch || !body.windows(8).any(|w| w == b"\"events\"") {
        None
    } else {
        serde_json::from_slice::<KeyedBatchIn>(body).ok()
    };
    let mut batch_key = None;
    let raw: Vec<EventIn> = if is_batch {
        parse_json(body)?
    } else if let Some(batch) = keyed {
        if batch.idempotency_key.is_empty() || batch.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(ApiError::bad_event(format!(
                "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"
            )));
        }
        batch_key = Some(batch.idempotency_key);
        batch.events
    } else {
        vec![parse_json(body)?]
    };
    let is_batch = is_batch || batch_key.is_some();
    if raw.is_empty() {
        return Err(ApiError::bad_event("the batch is empty"));
    }
    if raw.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::too_large(format!(
            "a batch holds at most {MAX_BATCH_EVENTS} events, this one has {}",
            raw.len()
        )));
    }
    let events = raw
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            validate(event, max_payload).map_err(|mut e| {
                if is_batch {
                    e.message = format!("event {i}: {}", e.message);
                }
                e
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Batch {
        events,
        is_batch,
        batch_key,
    })
}

/// Publishes one event, or a batch all-or-nothing.
#[utoipa::path(
    post,
    path = "/api/events",
    tag = "publish",
    request_body = super::openapi::PublishBody,
    responses(
        (status = 200, description = "Published: one answer, or an array for a batch", body = super::openapi::PublishAnswer),
        (status = 400, description = "Not JSON, or not a publishable event", body = super::openapi::ErrorBody),
        (status = 401, description = "No token, or one that does not verify", body = super::openapi::ErrorBody),
        (status = 403, description = "Not a service or admin token", body = super::openapi::ErrorBody),
        (status = 408, description = "The body did not arrive within --handshake-timeout", body = super::openapi::ErrorBody),
        (status = 413, description = "Body, batch or payload over its limit", body = super::openapi::ErrorBody),
        (status = 429, description = "Over --publish-rate, or the idempotency table is full (Retry-After)", body = super::openapi::ErrorBody),
        (status = 503, description = "The engine is unreachable; retry with the same idempotency key", body = super::openapi::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn publish(
    State(state): State<AppState>,
    ServiceCaller(caller): ServiceCaller,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&state, body, MAX_BODY_BYTES).await?;
    let max_payload = usize::try_from(state.config.max_message_bytes).unwrap_or(usize::MAX);
    let Batch {
        events,
        is_batch,
        batch_key,
    } = parse_events(&body, max_payload)?;

    if let Err(wait) =
        state
            .publish_limiter
            .check(&caller.user, events.len(), std::time::Instant::now())
    {
        return Err(ApiError::rate_limited(format!(
            "over {} events/s for publisher '{}'; retry in {wait:.1} s",
            state.config.publish_rate, caller.user
        ))
        .retry_after(std::time::Duration::from_secs_f64(wait.clamp(0.0, 3600.0))));
    }
    let types: Vec<_> = events.iter().map(|e| e.event_type.clone()).collect();
    let acks = match &batch_key {
        Some(key) => state.engine.publish_batch(key, events).await?,
        None => state.engine.publish(events).await?,
    };
    for event_type in &types {
        state.metrics.published(event_type.as_str());
    }
    let answer = if is_batch {
        PublishAnswer::Batch(acks)
    } else {
        match acks.into_iter().next() {
            Some(ack) => PublishAnswer::One(ack),
            None => return Err(ApiError::unavailable("the engine answered nothing")),
        }
    };
    Ok(Json(answer).into_response())
}

fn validate(event: EventIn, max_payload: usize) -> Result<NewEvent, ApiError> {
    let event_type =
        EventType::parse(&event.kind).map_err(|e| ApiError::bad_event(e.to_string()))?;
    let channel = match (event.org_id, event.user_id) {
        (Some(org), None) => ChannelName::org(
            &OrgId::new(&org.into_string()).map_err(|e| ApiError::bad_event(e.to_string()))?,
        ),
        (None, Some(user)) => ChannelName::user(
            &UserId::new(&user.into_string()).map_err(|e| ApiError::bad_event(e.to_string()))?,
        ),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_event(
                "give exactly one target: org_id (org-wide event) or user_id (user event), not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad_event(
                "missing target: give org_id (org-wide event) or user_id (user event)",
            ));
        }
    };
    match (seed_target(event_type.as_str()), channel.kind()) {
        (Some(ChannelKind::Org), ChannelKind::User) => {
            return Err(ApiError::bad_event(format!(
                "{event_type} goes to every connection of an org: give org_id, not user_id"
            )));
        }
        (Some(ChannelKind::User), ChannelKind::Org) => {
            return Err(ApiError::bad_event(format!(
                "{event_type} goes to one user's connections: give user_id, not org_id"
            )));
        }
        _ => {}
    }
    let payload = match event.payload {
        Some(payload) => payload,
        None => RawValue::from_string("{}".to_owned())
            .map_err(|e| ApiError::bad_event(e.to_string()))?,
    };
    if payload.get().len() > max_payload {
        return Err(ApiError::too_large(format!(
            "payload is {} bytes, over the limit of {max_payload}",
            payload.get().len()
        )));
    }
    protocol::check_payload(&payload).map_err(ApiError::bad_event)?;
    if let Some(key) = &event.idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY)
    {
        return Err(ApiError::bad_event(format!(
            "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"
        )));
    }
    Ok(NewEvent {
        channel,
        event_type,
        payload,
        idempotency_key: event.idempotency_key,
    })
}
