//! Tokens: HS256 JWTs signed with one shared secret. The claims, roles,
//! minting and verification are the wire's (`hrrt-protocol`); the server
//! adds revocation on top (`AppState::authenticate`).

pub use hrrt_protocol::auth::*;
