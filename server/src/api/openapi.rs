//! `GET /api/openapi.json`: the HTTP API as an OpenAPI 3.1 document,
//! generated from the handlers' `#[utoipa::path]` attributes and the types
//! they read and answer, so the document cannot drift from what is served.
//! `scripts/test.sh` runs schemathesis against it on a real server.
//!
//! The answers are hrrt-protocol's `api` types, which the handlers return.
//! What is here describes bodies whose parsing is hand-written: a publish
//! body (one event, an array, or a keyed batch) and ids (strings or
//! integers).

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::error::ApiError;
pub(crate) use hrrt_protocol::api::{ErrorBody, Healthy, PublishAnswer, Ready};

/// An id: a string or an integer (normalised to a string).
/// A string of 1 to 128 characters (no comma, whitespace or control
/// character), or an integer.
pub(crate) struct Id;

impl utoipa::PartialSchema for Id {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(hrrt_protocol::ids::MAX_ID_LEN))
                    .pattern(Some(r"^[^,\s\x00-\x1f\x7f-\x9f]+$"))
                    .examples(["7"]),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64))),
            )
            .description(Some(
                "A string of 1 to 128 characters (no comma, whitespace or control \
                 character), or an integer",
            ))
            .into()
    }
}

impl ToSchema for Id {}

/// One event, or a batch of at most 1,000 published all-or-nothing.
#[derive(serde::Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum PublishBody {
    One(super::publish::EventIn),
    Batch(Vec<super::publish::EventIn>),
    /// A batch under one idempotency key.
    KeyedBatch(super::publish::KeyedBatchIn),
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some(
                            "An HS256 token with role service or admin \
                             (hrrt token mint --role service --user backend)",
                        ))
                        .build(),
                ),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hrrt",
        description = "The HTTP API of hrrt, the realtime event server. \
                       WebSocket clients connect to GET /ws (docs/protocol.md)."
    ),
    paths(
        super::publish::publish,
        super::history::history,
        super::stats::stats,
        super::disconnect::disconnect,
        super::nodes::nodes,
        super::metrics::metrics,
        super::health::healthz,
        super::health::readyz,
        openapi,
    ),
    modifiers(&Bearer)
)]
struct ApiDoc;

/// The document, built once per call (it is small and rarely fetched).
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Serves this document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json"))
)]
pub async fn openapi() -> impl IntoResponse {
    match document().to_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => ApiError::unavailable(format!("the OpenAPI document failed to serialise: {e}"))
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_lists_every_route() {
        let doc: serde_json::Value = serde_json::to_value(document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
        for path in [
            "/api/events",
            "/api/history",
            "/api/stats",
            "/api/disconnect",
            "/api/nodes",
            "/api/openapi.json",
            "/metrics",
            "/healthz",
            "/readyz",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
