//! The WebSocket handshake (RFC 6455 §4.2), answered here rather than by
//! axum's `WebSocketUpgrade`, which hides the socket inside its own stream.
//! The session needs the bare `TcpStream` back: the fan-out writes event
//! frames to it directly (see [`crate::outbox`]).
//!
//! The checks and the refusals are axum's: the same status codes, a JSON
//! error body (`upgrade_required`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::ApiError;
use crate::listener::WriteTimeout;

/// A valid WebSocket handshake, not yet answered.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// The connection after the `101`: the TCP stream, and what the client
/// sent after its handshake that the HTTP server had already read.
pub struct Upgraded {
    pub tcp: TcpStream,
    pub read: Bytes,
}

/// Why a request to `/ws` is not a WebSocket handshake.
#[derive(Debug)]
pub struct Rejection {
    status: StatusCode,
    message: &'static str,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        ApiError::new(
            self.status,
            "upgrade_required",
            format!("/ws takes WebSocket handshakes only: {}", self.message),
        )
        .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Rejection> {
        let refuse = |status, message| Err(Rejection { status, message });
        // HTTP/1.1 only: the listener serves nothing else.
        if parts.version > Version::HTTP_11 {
            return refuse(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "WebSocket needs HTTP/1.1",
            );
        }
        if parts.method != Method::GET {
            return refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `GET`",
            );
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            );
        }
        if !header_is(&parts.headers, header::UPGRADE, "websocket") {
            return refuse(
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include 'websocket'",
            );
        }
        if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return refuse(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` header did not include '13'",
            );
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            );
        };
        if !is_websocket_key(key.as_bytes()) {
            return refuse(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` must be 16 bytes in base64 (RFC 6455 §4.1)",
            );
        }
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            );
        };
        Ok(Self { key, on_upgrade })
    }
}

impl Upgrade {
    /// The `101 Switching Protocols` answer, and the connection once hyper
    /// has sent it (`None` if the upgrade failed: the client went away).
    pub fn accept(self) -> (Response, impl Future<Output = Option<Upgraded>> + Send) {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let response = (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, "upgrade".to_owned()),
                (header::UPGRADE, "websocket".to_owned()),
                (header::SEC_WEBSOCKET_ACCEPT, accept),
            ],
        )
            .into_response();
        let on_upgrade = self.on_upgrade;
        let upgraded = async move {
            let upgraded = on_upgrade.await.ok()?;
            // The listener serves every connection as
            // `TokioIo<WriteTimeout<TcpStream>>` (listener.rs), so this is
            // the type hyper hands back; the session bounds its own writes.
            match upgraded.downcast::<TokioIo<WriteTimeout<TcpStream>>>() {
                Ok(parts) => Some(Upgraded {
                    tcp: parts.io.into_inner().into_inner(),
                    read: parts.read_buf,
                }),
                Err(_) => {
                    tracing::error!("upgraded connection is not a TCP stream; closing it");
                    None
                }
            }
        };
        (response, upgraded)
    }
}

/// Whether `key` is 16 bytes in base64 (RFC 6455 §4.2.1): 22 characters
/// of the alphabet and `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    let key = key.trim_ascii();
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Whether a comma-separated header lists `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Whether a header is `value` (case-insensitive).
fn header_is(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers.get(name).is_some_and(|v| {
        v.as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(value.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_16_bytes_of_base64() {
        assert!(is_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(is_websocket_key(b" x3JJHMbDL1EzLkh9GBhXDw== "));
        for bad in [
            &b""[..],
            b"x",
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZQ=",
            b"dGhlIHNhbXBsZSBub25jZQ===",
            b"dGhlIHNhbXBsZSBub25j*Q==",
            b"dGhlIHNhbXBsZSBub25jZQ==dGhl",
        ] {
            assert!(!is_websocket_key(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn connection_header_lists_are_split_and_compared_without_case() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(header_has_token(&headers, header::CONNECTION, "upgrade"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!header_has_token(&headers, header::CONNECTION, "upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(header_is(&headers, header::UPGRADE, "websocket"));
    }
}
