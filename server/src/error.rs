//! HTTP errors: `{"error":{"code":"…","message":"…"}}` with a status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::config::ConfigError;
use crate::engine::EngineError;

/// An error answer of the HTTP API. Client errors keep their message;
/// internal ones are logged once and answered generically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds `Retry-After`, rounded up to whole seconds (at least 1).
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after = Some(secs.max(1));
        self
    }

    /// 400: the body is not the JSON the endpoint takes.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_json", message)
    }

    /// 400: the JSON is well-formed but the event is not publishable.
    pub fn bad_event(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_event", message)
    }

    /// 400: a query parameter is missing or malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: no token, or a token that does not verify.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: a valid token whose role may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 413: the body or an event payload is over the limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 429: the publisher is over `--publish-rate`.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
    }

    /// 408: the request body did not arrive within `--handshake-timeout`.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "timeout", message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this endpoint",
        )
    }

    /// 503: the engine cannot be reached; retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Unavailable(_) => {
                tracing::warn!(error = %e, "engine call failed");
                Self::unavailable(e.to_string())
            }
            EngineError::IdempotencyFull { retry_after, .. } => {
                tracing::warn!(error = %e, "idempotency table full");
                Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "idempotency_table_full",
                    e.to_string(),
                )
                .retry_after(retry_after)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = hrrt_protocol::api::ErrorBody {
            error: hrrt_protocol::api::ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot use Redis at {url}: {reason}")]
    Redis { url: String, reason: String },
    #[error("cannot read --redis-ca {path}: {source}")]
    RedisCa {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A Redis URL without its credentials (the user info, and the query's
/// `sentinel_password`), for messages and logs.
pub fn redact_url(url: &str) -> String {
    let (url, query) = url.split_once('?').unwrap_or((url, ""));
    let base = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    };
    if query.is_empty() {
        return base;
    }
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.contains("password") => format!("{key}=…"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_a_message() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://…@h:1/0");
        assert_eq!(
            redact_url("redis+sentinel://:pw@h1,h2/m?sentinel_password=x&a=b"),
            "redis+sentinel://…@h1,h2/m?sentinel_password=…&a=b"
        );
        assert_eq!(redact_url("redis://h:1/"), "redis://h:1/");
    }
}
