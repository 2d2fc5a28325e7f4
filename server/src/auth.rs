//! Tokens: HS256 JWTs signed with one shared secret. The claims, roles,
//! minting and verification are the wire's (`hrrt-protocol`); the server
//! adds revocation on top (`AppState::authenticate`).

pub use hrrt_protocol::auth::*;

use axum::http::{HeaderMap, header};

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}
