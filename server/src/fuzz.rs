//! The entry points of the fuzz targets (`fuzz/fuzz_targets/`): each takes
//! untrusted bytes the way the server does and must not panic, whatever
//! the bytes. `tests/fuzz_corpus.rs` runs every input of `fuzz/corpus/`
//! through them on every test run, so a crash once found stays fixed.

use axum::extract::Query;
use axum::http::Uri;
use serde_json::value::RawValue;

use crate::api::history::HistoryParams;
use crate::api::publish::parse_events;
use crate::auth::Verifier;
use crate::protocol::{self, ChannelName};
use crate::session::{WsParams, parse_orgs};

/// The secret the token targets sign with.
const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-sec";

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A frame a client sends over the WebSocket.
pub fn client_frame(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = protocol::parse_client_frame(text);
    }
}

/// A `POST /api/events` body, validated as the handler does.
pub fn publish_body(data: &[u8]) {
    if let Ok(batch) = parse_events(data, 65536) {
        for event in &batch.events {
            // What the engine then does with a valid event.
            let frame =
                protocol::encode_event(&event.event_type, &event.payload, &event.channel, 1);
            assert!(serde_json::from_str::<serde_json::Value>(frame.as_str()).is_ok());
        }
    }
}

/// A `since` resume cursor: parses, or is refused; what parses prints back
/// to the same cursor.
pub fn cursor(data: &[u8]) {
    let Some(text) = text(data) else { return };
    if let Ok(entries) = protocol::parse_cursor(text) {
        let printed: Vec<String> = entries.iter().map(|(c, s)| format!("{c}@{s}")).collect();
        let again = protocol::parse_cursor(&printed.join(","));
        assert_eq!(again.ok(), Some(entries));
    }
    let _ = ChannelName::parse(text);
}

/// The query string of `GET /ws` and of `GET /api/history`, as the
/// extractors and then the handlers read it.
pub fn query(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(uri) = format!("/ws?{text}").parse::<Uri>() else {
        return;
    };
    if let Ok(Query(params)) = Query::<WsParams>::try_from_uri(&uri) {
        if let Some(since) = params.since.as_deref() {
            let _ = protocol::parse_cursor(since);
        }
        if let Some(orgs) = params.orgs.as_deref() {
            let _ = parse_orgs(orgs);
        }
    }
    if let Ok(Query(params)) = Query::<HistoryParams>::try_from_uri(&uri)
        && let Some(channel) = params.channel.as_deref()
    {
        let _ = ChannelName::parse(channel);
    }
}

/// A token as it arrives in `?token=` or `Authorization: Bearer`.
pub fn token(data: &[u8]) {
    if let Some(text) = text(data) {
        let _ = Verifier::new(SECRET).verify(text);
    }
}

/// Claims signed with the right secret, so verification gets past the
/// signature to the numbers and ids inside; a verified token's expiry is
/// formatted as the `connected` frame does.
pub fn claims(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(raw) = RawValue::from_string(text.to_owned()) else {
        return;
    };
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let Ok(token) = jsonwebtoken::encode(&header, &raw, &key) else {
        return;
    };
    if let Ok(identity) = Verifier::new(SECRET).verify(&token) {
        let _ = protocol::unix_to_rfc3339(identity.exp);
    }
}
