//! A real server on 127.0.0.1:0 and real WebSocket/HTTP clients.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hrrt_server::Config;
use hrrt_server::auth::{Claims, Role, mint};
use hrrt_testkit::TestServer;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use hrrt_testkit::{SECRET, within};

/// reqwest is built with TLS whose crypto provider the binaries install
/// at start; tests install it here.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub fn token(user: &str, org: &str, role: Role) -> String {
    mint(SECRET, &Claims::new(user, Some(org), role, 3600)).unwrap()
}

pub fn service_token() -> String {
    mint(SECRET, &Claims::new("backend", None, Role::Service, 3600)).unwrap()
}

pub struct Server {
    pub addr: SocketAddr,
    kit: TestServer,
    http: reqwest::Client,
}

impl Server {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(configure: impl FnOnce(&mut Config)) -> Self {
        let kit = TestServer::with(configure).await;
        Self {
            addr: kit.addr,
            kit,
            http: http_client(),
        }
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws?{query}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connects as `user` of `org` and reads the `connected` frame.
    pub async fn connect(&self, user: &str, org: &str) -> Client {
        self.connect_query(&format!("token={}", token(user, org, Role::User)))
            .await
    }

    pub async fn connect_query(&self, query: &str) -> Client {
        let mut client = self.open(query).await;
        let connected = client.next_json().await;
        assert_eq!(connected["type"], "connected", "{connected}");
        client.connected = connected;
        client
    }

    /// Like [`Server::start`] with a state the test keeps (to reach the
    /// hub or the background tasks).
    pub async fn with_state(configure: impl FnOnce(&mut Config)) -> (Self, hrrt_server::AppState) {
        let server = Self::with(configure).await;
        let state = server.kit.state.clone();
        (server, state)
    }

    /// A client whose socket receive buffer is tiny (4 KiB), so the
    /// server's writes block as soon as it stops reading, and a backlog
    /// builds on the server while it reads slowly.
    pub async fn open_with_small_buffer(&self, query: &str) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = within(socket.connect(self.addr)).await.unwrap();
        let request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                self.ws_url(query),
            )
            .unwrap();
        let (ws, _) = within(tokio_tungstenite::client_async(
            request,
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        ))
        .await
        .unwrap();
        Client {
            ws,
            connected: Value::Null,
        }
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        let res = within(self.http.get(self.url("/metrics")).send())
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        within(res.text()).await.unwrap()
    }

    /// The value of an unlabelled counter or gauge of `GET /metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .unwrap_or_else(|| panic!("no {name} in /metrics"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} is {other:?}"),
        }
    }

    /// Polls `GET /readyz` until it has answered 503 and then 200 again
    /// (a background task died and was restarted); bounded by `within`.
    pub async fn until_down_then_up(&self) {
        let mut saw_down = false;
        within(async {
            loop {
                let (status, _) = self.get("/readyz", None).await;
                if status == 503 {
                    saw_down = true;
                } else if saw_down {
                    assert_eq!(status, 200);
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
    }

    /// POSTs a raw body to /api/events with a service token; the whole
    /// response (for its headers).
    pub async fn publish_response(&self, body: Value) -> reqwest::Response {
        let req = self
            .http
            .post(self.url("/api/events"))
            .bearer_auth(service_token())
            .json(&body);
        within(req.send()).await.unwrap()
    }

    /// Opens a WebSocket without reading anything.
    pub async fn open(&self, query: &str) -> Client {
        let (ws, _) = within(tokio_tungstenite::connect_async(self.ws_url(query)))
            .await
            .unwrap();
        Client {
            ws,
            connected: Value::Null,
        }
    }

    /// POSTs `body` to /api/events with a service token.
    pub async fn publish(&self, body: Value) -> (u16, Value) {
        self.publish_as(Some(&service_token()), body).await
    }

    pub async fn publish_as(&self, token: Option<&str>, body: Value) -> (u16, Value) {
        self.post_raw(token, body.to_string()).await
    }

    pub async fn post_raw(&self, token: Option<&str>, body: String) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.url("/api/events"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = within(req.send()).await.unwrap();
        let status = res.status().as_u16();
        (status, within(res.json::<Value>()).await.unwrap())
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = within(req.send()).await.unwrap();
        let status = res.status().as_u16();
        (status, within(res.json::<Value>()).await.unwrap())
    }

    /// Publishes one org event and returns its seq.
    pub async fn publish_org(&self, org: &str, kind: &str, payload: Value) -> u64 {
        let (status, body) = self
            .publish(serde_json::json!({"type": kind, "org_id": org, "payload": payload}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["seq"].as_u64().unwrap()
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(self) -> Result<(), hrrt_server::ServerError> {
        self.kit.stop().await
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub connected: Value,
}

/// What a client read next.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Close(u16, String),
}

impl Client {
    /// The next text frame or close, skipping WebSocket Ping/Pong.
    pub async fn next_frame(&mut self) -> Frame {
        loop {
            match within(self.ws.next()).await {
                Some(Ok(Message::Text(text))) => {
                    return Frame::Json(serde_json::from_str(&text).unwrap());
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    // Sends tungstenite's queued close reply, completing the
                    // handshake so the server need not wait for it.
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.flush()).await;
                    return Frame::Close(code, reason);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    pub async fn next_json(&mut self) -> Value {
        match self.next_frame().await {
            Frame::Json(v) => v,
            Frame::Close(code, reason) => panic!("closed {code} {reason}"),
        }
    }

    /// The next frame that is not a JSON keep-alive `ping`.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"] != "ping" {
                return v;
            }
        }
    }

    /// Reads until the server closes; skips events on the way.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next_frame().await {
                Frame::Close(code, reason) => return (code, reason),
                Frame::Json(_) => continue,
            }
        }
    }

    /// Reads events until the server closes, checking they come in seq
    /// order right after `last`; answers the close and the last seq read.
    pub async fn read_in_order_until_close(&mut self, mut last: u64) -> (u16, String, u64) {
        loop {
            match self.next_frame().await {
                Frame::Json(e) if e["type"] == "ping" => {}
                Frame::Json(e) => {
                    assert_eq!(e["seq"].as_u64(), Some(last + 1), "{e}");
                    last += 1;
                }
                Frame::Close(code, reason) => return (code, reason, last),
            }
        }
    }

    /// Reads the very next frame and asserts it is a close.
    pub async fn expect_close_now(&mut self) -> (u16, String) {
        match self.next_frame().await {
            Frame::Close(code, reason) => (code, reason),
            Frame::Json(v) => panic!("expected a close, got {v}"),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        within(self.ws.send(Message::text(text))).await.unwrap();
    }

    /// Has `publisher` publish one event to `org` and answers its seq once
    /// this client received it.
    pub async fn next_event_after(&mut self, publisher: &Server, org: &str) -> u64 {
        let seq = publisher
            .publish_org(org, "entity.created", serde_json::json!({}))
            .await;
        assert_eq!(self.next_event().await["seq"], seq);
        seq
    }

    pub fn position(&self, channel: &str) -> u64 {
        self.connected["payload"]["positions"][channel]
            .as_u64()
            .unwrap()
    }
}

/// A bare WebSocket client over TCP that never answers Pings, to play a
/// peer that has gone silent. It reads raw frames (server frames are not
/// masked).
pub struct SilentClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl SilentClient {
    pub async fn connect(addr: SocketAddr, query: &str) -> Self {
        let mut stream = within(TcpStream::connect(addr)).await.unwrap();
        let request = format!(
            "GET /ws?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut client = Self {
            stream,
            buf: Vec::new(),
        };
        loop {
            if let Some(end) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&client.buf[..end]).to_string();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                client.buf.drain(..end + 4);
                break;
            }
            client.fill().await;
        }
        client
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = within(self.stream.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "connection ended without a close frame");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Writes `chunk` over and over, reading nothing, until `limit` bytes
    /// are written or one write has made no progress for a second (the
    /// server stopped reading: TCP back-pressure). Returns the bytes
    /// written.
    pub async fn flood(&mut self, chunk: &[u8], limit: usize) -> usize {
        let mut written = 0;
        while written < limit {
            match tokio::time::timeout(Duration::from_secs(1), self.stream.write_all(chunk)).await {
                Ok(result) => {
                    result.unwrap();
                    written += chunk.len();
                }
                Err(_) => break,
            }
        }
        written
    }

    /// Reads frames until a close frame; returns its code and the opcodes
    /// seen before it.
    pub async fn read_until_close(&mut self) -> (u16, Vec<u8>) {
        let mut opcodes = Vec::new();
        loop {
            while self.buf.len() < 2 {
                self.fill().await;
            }
            let opcode = self.buf[0] & 0x0f;
            let (len, header) = match self.buf[1] & 0x7f {
                126 => {
                    while self.buf.len() < 4 {
                        self.fill().await;
                    }
                    (
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                        4,
                    )
                }
                127 => panic!("frame too large for this test client"),
                n => (usize::from(n), 2),
            };
            while self.buf.len() < header + len {
                self.fill().await;
            }
            let payload: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
            if opcode == 0x8 {
                return (u16::from_be_bytes([payload[0], payload[1]]), opcodes);
            }
            opcodes.push(opcode);
        }
    }
}

impl Server {
    /// POSTs JSON to any endpoint.
    pub async fn post_json(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = within(req.send()).await.unwrap();
        let status = res.status().as_u16();
        (status, within(res.json::<Value>()).await.unwrap())
    }
}
