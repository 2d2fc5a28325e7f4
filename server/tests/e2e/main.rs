//! End-to-end tests: a real server on 127.0.0.1:0, real WebSocket and HTTP
//! clients. Every network wait is bounded by `harness::within`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod auth;
mod binary;
mod browser;
mod client_frames;
mod delivery;
mod direct;
mod engines;
mod harness;
mod hostile;
mod keepalive;
mod protection;
mod publish;
mod redis;
mod redis_deployed;
mod resume;
mod sentinel;
mod shutdown;
mod soak;
mod trust;
