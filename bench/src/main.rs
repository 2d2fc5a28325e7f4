//! The two baselines `scripts/bench.sh` measures hrrt against, in the same
//! run, under the same `hrrt load`:
//!
//! - `bare`: what a competent first version of this server looks like with
//!   axum and tungstenite: one `tokio::sync::broadcast` channel per org,
//!   one task per connection that forwards every message with
//!   `socket.send`. No history, resume, bounds or keep-alive.
//! - `floor`: the kernel's share. It holds the same sockets and, for each
//!   event, writes one pre-encoded WebSocket frame to each of them with a
//!   plain non-blocking `send`, from the publish request itself: no task,
//!   queue or framing per recipient. No server can deliver for less here.
//!   A write the kernel does not take whole is counted (`short_writes` in
//!   the log at exit), not retried: the probe measures cost, not delivery.
//!   `hrrt load --batch` spreads each request over the orgs, one event per
//!   org, so here too every socket gets one frame per request: one `send`
//!   per delivery. A server whose queues fill under load writes several
//!   frames in one `send` and so goes below this floor, paying in latency;
//!   the floor never waits, so it never coalesces.
//!
//! Both speak just enough of hrrt's protocol for `hrrt load`: `GET /healthz`,
//! `GET /ws?token=` (HS256 token from `HRRT_JWT_SECRET`, a `connected`
//! frame), and `POST /api/events` with a JSON array of `{type, org_id,
//! payload}`, each event framed by `hrrt-protocol` exactly as hrrt frames
//! it, with a seq per org.
//!
//! ```sh
//! HRRT_JWT_SECRET=… hrrt-baseline bare 127.0.0.1:18090
//! HRRT_JWT_SECRET=… hrrt-baseline floor 127.0.0.1:18090
//! ```

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use hrrt_protocol::frame::{Connected, encode_connected, encode_event};
use hrrt_protocol::{ChannelName, EventType, OrgId, Verifier};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Messages a `bare` connection may fall behind before it lags.
const BROADCAST_CAPACITY: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bare,
    Floor,
}

/// One org: its seq, and its readers.
#[derive(Default)]
struct Org {
    seq: u64,
    bare: Option<broadcast::Sender<Utf8Bytes>>,
    floor: Vec<Arc<TcpStream>>,
}

struct Shared {
    mode: Mode,
    verifier: Verifier,
    orgs: Mutex<HashMap<String, Org>>,
    short_writes: AtomicU64,
}

type App = Arc<Shared>;

fn lock(orgs: &Mutex<HashMap<String, Org>>) -> MutexGuard<'_, HashMap<String, Org>> {
    orgs.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
}

#[derive(Deserialize)]
struct NewEvent {
    #[serde(rename = "type")]
    event_type: String,
    org_id: String,
    payload: Box<RawValue>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some("bare") => Mode::Bare,
        Some("floor") => Mode::Floor,
        _ => {
            eprintln!("usage: hrrt-baseline bare|floor ADDR (HRRT_JWT_SECRET set)");
            return ExitCode::from(2);
        }
    };
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:18090".into());
    let Ok(secret) = std::env::var("HRRT_JWT_SECRET") else {
        eprintln!("hrrt-baseline: HRRT_JWT_SECRET is not set");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hrrt-baseline: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = Arc::new(Shared {
        mode,
        verifier: Verifier::new(&secret),
        orgs: Mutex::default(),
        short_writes: AtomicU64::new(0),
    });
    match runtime.block_on(serve(app, &addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hrrt-baseline: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(app: App, addr: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/ws", get(ws))
        .route("/api/events", post(publish))
        .with_state(app.clone());
    let stopped = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
    };
    // hyper's HTTP/1 builder, not `axum::serve`: axum's wraps the stream
    // (HTTP/2 detection), and the floor's upgrade must find the bare
    // `TokioIo<TcpStream>` to keep it.
    let shutdown = async {
        tokio::select! { () = stopped => {}, () = term => {} }
    };
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
    eprintln!(
        "hrrt-baseline: short_writes {}",
        app.short_writes.load(Ordering::Relaxed)
    );
    Ok(())
}

fn connected(user: &hrrt_protocol::UserId, org: &OrgId, seq: u64) -> String {
    let channel = ChannelName::org(org);
    encode_connected(&Connected {
        connection_id: "baseline".into(),
        user_id: user.clone(),
        org_id: org.clone(),
        expires_at: "2099-01-01T00:00:00Z".into(),
        epoch: "baseline".into(),
        positions: BTreeMap::from([(channel.to_string(), seq)]),
    })
}

async fn ws(State(app): State<App>, Query(query): Query<WsQuery>, request: Request) -> Response {
    // `hrrt load` sends the token as `Authorization: Bearer`.
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let token = query.token.or(bearer).unwrap_or_default();
    let identity = match app.verifier.verify(&token) {
        Ok(identity) => identity,
        Err(e) => return (StatusCode::UNAUTHORIZED, e.to_string()).into_response(),
    };
    let Some(org) = identity.org.clone() else {
        return (StatusCode::FORBIDDEN, "no org").into_response();
    };
    match app.mode {
        Mode::Bare => bare_ws(app, identity.user, org, request).await,
        Mode::Floor => floor_ws(app, identity.user, org, request),
    }
}

/// The bare broadcast: axum's upgrade, a task per connection forwarding
/// its org's broadcast channel.
async fn bare_ws(app: App, user: hrrt_protocol::UserId, org: OrgId, request: Request) -> Response {
    use axum::extract::FromRequest;
    let upgrade = match WebSocketUpgrade::from_request(request, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    upgrade.on_upgrade(move |mut socket: WebSocket| async move {
        let (mut rx, seq) = {
            let mut orgs = lock(&app.orgs);
            let entry = orgs.entry(org.to_string()).or_default();
            let tx = entry
                .bare
                .get_or_insert_with(|| broadcast::channel(BROADCAST_CAPACITY).0);
            (tx.subscribe(), entry.seq)
        };
        if socket
            .send(Message::Text(connected(&user, &org, seq).into()))
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                message = rx.recv() => match message {
                    Ok(frame) => {
                        if socket.send(Message::Text(frame)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    })
}

/// The floor probe: a hand-made upgrade that keeps the TCP stream, which
/// publishes then write to directly.
fn floor_ws(app: App, user: hrrt_protocol::UserId, org: OrgId, mut request: Request) -> Response {
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return (StatusCode::BAD_REQUEST, "not a websocket handshake").into_response();
    };
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return (StatusCode::UPGRADE_REQUIRED, "cannot upgrade").into_response();
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            return;
        };
        let tcp = Arc::new(parts.io.into_inner());
        let _ = tcp.set_nodelay(true);
        let seq = {
            let mut orgs = lock(&app.orgs);
            let entry = orgs.entry(org.to_string()).or_default();
            entry.floor.push(tcp.clone());
            entry.seq
        };
        let _ = write_all(&tcp, &frame(&connected(&user, &org, seq))).await;
        // Read and drop what the client sends until it goes.
        let mut buf = [0u8; 512];
        loop {
            if tcp.readable().await.is_err() {
                break;
            }
            match tcp.try_read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        let mut orgs = lock(&app.orgs);
        if let Some(entry) = orgs.get_mut(org.as_str()) {
            entry.floor.retain(|t| !Arc::ptr_eq(t, &tcp));
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn write_all(tcp: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One unmasked WebSocket text frame, framed as hrrt frames it.
fn frame(text: &str) -> Bytes {
    Bytes::from(hrrt_protocol::ws::text_frame(text.as_bytes()))
}

async fn publish(State(app): State<App>, body: axum::body::Bytes) -> Response {
    let Ok(events) = serde_json::from_slice::<Vec<NewEvent>>(&body) else {
        return (StatusCode::BAD_REQUEST, "expected an array of events").into_response();
    };
    let mut orgs = lock(&app.orgs);
    for event in events {
        let (Ok(org), Ok(event_type)) = (
            OrgId::new(&event.org_id),
            EventType::parse(&event.event_type),
        ) else {
            return (StatusCode::BAD_REQUEST, "bad org_id or type").into_response();
        };
        let entry = orgs.entry(org.to_string()).or_default();
        entry.seq += 1;
        let text = encode_event(
            &event_type,
            &event.payload,
            &ChannelName::org(&org),
            entry.seq,
        );
        match app.mode {
            Mode::Bare => {
                if let Some(tx) = &entry.bare {
                    let _ = tx.send(Utf8Bytes::from(text));
                }
            }
            Mode::Floor => {
                let wire = frame(&text);
                for tcp in &entry.floor {
                    if !matches!(tcp.try_write(&wire), Ok(n) if n == wire.len()) {
                        app.short_writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    drop(orgs);
    (StatusCode::OK, "{}").into_response()
}
