//! The one client of the hrrt server that every command uses: where the
//! server is, which token to send, the resume cursor, the WebSocket
//! connection and the HTTP API.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use hrrt_protocol::frame::DecodeError;
use hrrt_protocol::{Claims, ClientFrame, Close, Role, ServerFrame, mint};
use reqwest::Url;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::args::ServerArgs;

/// A WebSocket connection to the server.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The server's HTTP and WebSocket base URLs, from `--url`.
#[derive(Debug, Clone)]
pub struct Target {
    pub http: Url,
    pub ws: Url,
}

impl Target {
    /// Accepts `http://`, `https://`, `ws://` or `wss://` and derives the
    /// other scheme; `host:port` alone is taken as `http://host:port`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let with_scheme;
        let url = if url.contains("://") {
            url
        } else if let Some((scheme, rest)) = url.split_once("//") {
            bail!("invalid --url '{url}': did you mean {scheme}://{rest}?");
        } else {
            with_scheme = format!("http://{url}");
            &with_scheme
        };
        let parsed = Url::parse(url).map_err(|e| {
            anyhow!(
                "invalid --url '{url}' ({e}): give http://host:port, e.g. http://127.0.0.1:8000"
            )
        })?;
        let (http, ws) = match parsed.scheme() {
            "http" | "ws" => ("http", "ws"),
            "https" | "wss" => ("https", "wss"),
            other => bail!("invalid --url '{url}': scheme '{other}' is not http(s) or ws(s)"),
        };
        let mut http_url = parsed.clone();
        let mut ws_url = parsed;
        http_url
            .set_scheme(http)
            .map_err(|()| anyhow!("invalid --url '{url}'"))?;
        ws_url
            .set_scheme(ws)
            .map_err(|()| anyhow!("invalid --url '{url}'"))?;
        Ok(Self {
            http: http_url,
            ws: ws_url,
        })
    }

    /// An HTTP endpoint such as `/api/events`.
    pub fn endpoint(&self, path: &str) -> anyhow::Result<Url> {
        self.http
            .join(path)
            .with_context(|| format!("building the URL of {path}"))
    }
}

/// Where tokens come from: a fixed `--token`, or minted from `--secret`
/// (fresh for every connection, so a long `listen` never runs on an
/// expired token).
#[derive(Debug, Clone)]
pub enum TokenSource {
    Fixed(String),
    Mint {
        secret: String,
        user: String,
        org: Option<String>,
        role: Role,
        ttl: Duration,
    },
}

impl TokenSource {
    /// What the HTTP API commands (`publish`, `stats`, `history`, …) use:
    /// `--token`, or a `service` token for `hrrt-cli` minted from `--secret`.
    pub fn service(global: &ServerArgs) -> anyhow::Result<Self> {
        Self::from_args(
            global,
            Some("hrrt-cli"),
            None,
            Role::Service,
            "pass --token, or --secret (HRRT_JWT_SECRET) to mint a service token",
        )
    }

    /// `--token` if given, else a token minted from `--secret` for `user`
    /// of `org` with `role`. `hint` says what to pass when neither is there.
    pub fn from_args(
        global: &ServerArgs,
        user: Option<&str>,
        org: Option<&str>,
        role: Role,
        hint: &str,
    ) -> anyhow::Result<Self> {
        if let Some(token) = &global.token {
            return Ok(Self::Fixed(token.clone()));
        }
        let Some(secret) = &global.secret else {
            bail!("no token: {hint}");
        };
        let Some(user) = user else {
            bail!("no token: {hint}");
        };
        Ok(Self::Mint {
            secret: secret.clone(),
            user: user.to_owned(),
            org: org.map(str::to_owned),
            role,
            ttl: Duration::from_secs(3600),
        })
    }

    pub fn token(&self) -> anyhow::Result<String> {
        match self {
            Self::Fixed(token) => Ok(token.clone()),
            Self::Mint {
                secret,
                user,
                org,
                role,
                ttl,
            } => mint(
                secret,
                &Claims::new(user, org.as_deref(), *role, ttl.as_secs()),
            )
            .context("minting a token"),
        }
    }

    /// Whether a fresh token can be had (after `token expired`).
    pub fn can_mint(&self) -> bool {
        matches!(self, Self::Mint { .. })
    }

    /// What a refused connection means: a token minted with `--secret`
    /// that the server calls invalid was signed with another secret.
    pub fn explain_close(&self, close: &Close) -> String {
        if close.code == hrrt_protocol::CloseCode::Policy
            && close.reason == hrrt_protocol::close::reason::INVALID_TOKEN
            && self.can_mint()
        {
            return format!(
                "the server refused the token minted with --secret ({close}): {WRONG_SECRET} (or this machine's clock is ahead of the server's)"
            );
        }
        format!("the server closed the connection: {close}")
    }
}

/// The fix for a token minted with `--secret` that the server refuses.
const WRONG_SECRET: &str = "--secret does not match the server's secret; pass the server's (--secret or HRRT_JWT_SECRET; `hrrt serve --dev` prints its own)";

pub use hrrt_protocol::Cursor;

/// How long connecting (TCP, TLS and the WebSocket handshake) may take by
/// default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the token goes in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenIn {
    /// `Authorization: Bearer`: keeps tokens out of access logs.
    #[default]
    Header,
    /// `?token=`, as the browser front end does. *compat*
    Query,
}

/// How to open a connection: everything but the server and the token.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub token_in: TokenIn,
    /// Resume from here (`since` + `epoch`); empty for a fresh start.
    pub cursor: Cursor,
    /// Admin watch: `7,9` or `*`.
    pub orgs: Option<String>,
    /// The local address to connect from (`hrrt load --source-ips`).
    pub source: Option<IpAddr>,
    /// tungstenite's read and write buffer sizes; `None` for its defaults.
    /// A load generator holding tens of thousands of connections wants
    /// small ones.
    pub buffers: Option<(usize, usize)>,
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            token_in: TokenIn::Header,
            cursor: Cursor::default(),
            orgs: None,
            source: None,
            buffers: None,
            timeout: CONNECT_TIMEOUT,
        }
    }
}

/// What a connection received next, decoded.
#[derive(Debug)]
pub enum Received {
    /// A frame, and its text exactly as the server sent it.
    Frame { frame: ServerFrame, text: Utf8Bytes },
    /// A text frame that is not an hrrt frame.
    Garbled { text: Utf8Bytes, error: DecodeError },
    /// The server closed the connection.
    Closed(Close),
    /// The connection ended without a close frame.
    Lost(String),
}

/// What a connection received next, undecoded (the load generator reads
/// hundreds of thousands of frames a second and decodes only what it needs).
#[derive(Debug)]
pub enum RawReceived {
    Text(Utf8Bytes),
    Closed(Close),
    Lost(String),
}

/// An open WebSocket to the server: the one client every command uses.
pub struct Connection {
    ws: Ws,
}

impl Connection {
    /// Opens `/ws` on `target` with `token`: TCP (from `options.source` if
    /// set), TLS for `wss://`, the handshake, within `options.timeout`.
    pub async fn open(
        target: &Target,
        token: &str,
        options: &ConnectOptions,
    ) -> anyhow::Result<Self> {
        install_tls();
        let request = ws_request(target, token, options)?;
        let open = async {
            let host = target.ws.host_str().unwrap_or("127.0.0.1").to_owned();
            let port = target.ws.port_or_known_default().unwrap_or(80);
            let stream = tcp(&host, port, options.source).await?;
            let _ = stream.set_nodelay(true);
            let config = options.buffers.map(|(read, write)| {
                WebSocketConfig::default()
                    .read_buffer_size(read)
                    .write_buffer_size(write)
            });
            let (ws, _) =
                tokio_tungstenite::client_async_tls_with_config(request, stream, config, None)
                    .await
                    .map_err(|e| {
                        anyhow!("{}", refused_upgrade(&e).unwrap_or_else(|| root_cause(&e)))
                    })?;
            Ok::<_, anyhow::Error>(ws)
        };
        match tokio::time::timeout(options.timeout, open).await {
            Ok(Ok(ws)) => Ok(Self { ws }),
            Ok(Err(e)) => bail!("{}", unreachable(&target.ws, &format!("{e:#}"))),
            Err(_) => bail!(
                "cannot connect to {}: no answer within {}",
                target.ws,
                humantime::format_duration(options.timeout)
            ),
        }
    }

    /// The next frame (WebSocket Pings and Pongs are answered and skipped).
    pub async fn next(&mut self) -> Received {
        decode(self.next_raw().await)
    }

    /// The next text frame, undecoded.
    pub async fn next_raw(&mut self) -> RawReceived {
        loop {
            if let Some(received) = classify(self.ws.next().await) {
                return received;
            }
        }
    }

    /// Sends a client frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> anyhow::Result<()> {
        self.ws
            .send(Message::text(frame.encode()))
            .await
            .map_err(|e| anyhow!("sending {}: {}", frame_kind(frame), root_cause(&e)))
    }

    /// Closes politely, bounded: the server may be gone.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_millis(500), self.ws.close(None)).await;
    }

    /// Splits into a sender and a receiver that can be used from two tasks.
    pub fn split(self) -> (Sender, Receiver) {
        let (sink, stream) = self.ws.split();
        (Sender { sink }, Receiver { stream })
    }
}

fn frame_kind(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::AuthRefresh { .. } => hrrt_protocol::frame::kind::AUTH_REFRESH,
        ClientFrame::Ping => hrrt_protocol::frame::kind::PING,
        ClientFrame::Pong => hrrt_protocol::frame::kind::PONG,
    }
}

/// The sending half of a split [`Connection`].
pub struct Sender {
    sink: futures_util::stream::SplitSink<Ws, Message>,
}

impl Sender {
    /// Closes politely, bounded.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.close()).await;
    }

    pub async fn send(&mut self, frame: &ClientFrame) -> anyhow::Result<()> {
        self.sink
            .send(Message::text(frame.encode()))
            .await
            .map_err(|e| anyhow!("sending {}: {}", frame_kind(frame), root_cause(&e)))
    }
}

/// The receiving half of a split [`Connection`].
pub struct Receiver {
    stream: futures_util::stream::SplitStream<Ws>,
}

impl Receiver {
    /// Like [`Connection::next`].
    pub async fn next(&mut self) -> Received {
        loop {
            if let Some(received) = classify(self.stream.next().await) {
                return decode(received);
            }
        }
    }
}

/// What one read from the socket means; `None` for control frames the
/// WebSocket layer answers itself.
fn classify(
    message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Option<RawReceived> {
    Some(match message {
        Some(Ok(Message::Text(text))) => RawReceived::Text(text),
        Some(Ok(Message::Close(frame))) => RawReceived::Closed(match frame {
            Some(f) => Close::new(u16::from(f.code), f.reason.as_str()),
            // 1005: a close frame without a code.
            None => Close::new(1005, ""),
        }),
        Some(Ok(_)) => return None,
        Some(Err(e)) => RawReceived::Lost(root_cause(&e)),
        None => RawReceived::Lost("connection ended".to_owned()),
    })
}

fn decode(raw: RawReceived) -> Received {
    match raw {
        RawReceived::Text(text) => match ServerFrame::decode(&text) {
            Ok(frame) => Received::Frame { frame, text },
            Err(error) => Received::Garbled { text, error },
        },
        RawReceived::Closed(close) => Received::Closed(close),
        RawReceived::Lost(why) => Received::Lost(why),
    }
}

/// A TCP connection to `host:port`, from `source` if given.
async fn tcp(host: &str, port: u16, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect((host, port))
            .await
            .map_err(|e| anyhow!("{e}"));
    };
    let server: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| anyhow!("resolving {host}: {e}"))?
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| anyhow!("no address of {host} matches {source}"))?;
    let socket = if source.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| anyhow!("socket: {e}"))?;
    // A `bind(addr, 0)` reserves an ephemeral port at once, and the
    // kernel's search for a free one walks the ports already bound to that
    // address, which dominates at tens of thousands of connections
    // (docs/dev/benchmark-notes.md, the cluster row). With this option the
    // port is picked at `connect`, per destination, which is cheap and lets
    // one port serve every node.
    // Best effort: without it the connection still works, only slower.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    );
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(|e| anyhow!("bind {source}: {e}"))?;
    socket.connect(server).await.map_err(|e| anyhow!("{e}"))
}

/// The handshake request for `/ws`.
pub fn ws_request(
    target: &Target,
    token: &str,
    options: &ConnectOptions,
) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let mut url = target.ws.join("/ws")?;
    {
        let mut query = url.query_pairs_mut();
        if options.token_in == TokenIn::Query {
            query.append_pair("token", token);
        }
        if !options.cursor.is_empty() {
            query.append_pair("since", &options.cursor.to_since());
            if let Some(epoch) = &options.cursor.epoch {
                query.append_pair("epoch", epoch);
            }
        }
        if let Some(orgs) = &options.orgs {
            query.append_pair("orgs", orgs);
        }
    }
    let url_text = url.as_str().trim_end_matches('?').to_owned();
    let mut request = url_text.as_str().into_client_request()?;
    if options.token_in == TokenIn::Header {
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow!("the token is not a valid header value"))?;
        request.headers_mut().insert("authorization", bearer);
    }
    Ok(request)
}

/// Makes `https://` and `wss://` work: installs the process-wide TLS
/// crypto provider (ring) that both the HTTP and the WebSocket client use.
/// Idempotent; every client constructor here calls it, so library users
/// and tests need not.
pub fn install_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client (TLS ready) whose requests time out after `timeout`.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    install_tls();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .context("building the HTTP client")
}

/// The HTTP API.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    target: Target,
}

impl Api {
    pub fn new(target: Target) -> anyhow::Result<Self> {
        let http = http_client(Duration::from_secs(30))?;
        Ok(Self { http, target })
    }

    /// POSTs JSON with a bearer token; answers the status and JSON body.
    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        self.post_text(path, Some(token), body.to_string()).await
    }

    /// POSTs a body as it is (it need not be valid JSON: QA sends broken
    /// ones on purpose), with a bearer token if given.
    pub async fn post_text(
        &self,
        path: &str,
        token: Option<&str>,
        body: String,
    ) -> anyhow::Result<(u16, Value)> {
        let url = self.target.endpoint(path)?;
        let mut request = self
            .http
            .post(url.clone())
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| anyhow!("{}", unreachable(&url, &root_cause(&e))))?;
        read_json(response).await
    }

    /// GETs a JSON endpoint with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> anyhow::Result<(u16, Value)> {
        let url = self.target.endpoint(path)?;
        let response = self
            .http
            .get(url.clone())
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| anyhow!("{}", unreachable(&url, &root_cause(&e))))?;
        read_json(response).await
    }
}

async fn read_json(response: reqwest::Response) -> anyhow::Result<(u16, Value)> {
    let status = response.status().as_u16();
    let url = response.url().clone();
    let html = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    let text = response.text().await.context("reading the answer")?;
    match serde_json::from_str(&text) {
        Ok(body) => Ok((status, body)),
        // hrrt answers JSON on every API path; a web page means --url
        // names another server (a proxy's error page, a web app).
        Err(_) if html || text.trim_start().starts_with('<') => bail!(
            "{} answered {status} with a web page, not hrrt's JSON: it is not an hrrt server \
             (check --url / HRRT_URL)",
            url.origin().ascii_serialization()
        ),
        Err(_) => Ok((status, Value::String(text))),
    }
}

/// One line for a failure to reach `url`: what happened and what to do.
fn unreachable(url: &Url, cause: &str) -> String {
    let origin = format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or("?"),
        url.port_or_known_default().unwrap_or(0)
    );
    let lower = cause.to_ascii_lowercase();
    if lower.contains("connection refused") {
        format!(
            "nothing is listening at {origin} (connection refused): start a server with \
             `hrrt serve --dev`, or point --url (HRRT_URL) at one"
        )
    } else if lower.contains("invalidcontenttype") || lower.contains("corrupt message") {
        format!(
            "{origin} does not speak TLS (it answered in plain HTTP): use {}:// instead",
            if url.scheme() == "wss" { "ws" } else { "http" }
        )
    } else if lower.contains("invalid http version") || lower.contains("httparse") {
        format!(
            "{origin} did not answer in HTTP (is it a TLS port? then use {}://)",
            if url.scheme() == "ws" { "wss" } else { "https" }
        )
    } else {
        format!("cannot reach {origin}: {cause}")
    }
}

/// An upgrade answered with a plain HTTP status: hrrt's JSON error, or a
/// server that is not hrrt.
fn refused_upgrade(e: &tokio_tungstenite::tungstenite::Error) -> Option<String> {
    let tokio_tungstenite::tungstenite::Error::Http(response) = e else {
        return None;
    };
    let status = response.status();
    let body = response.body().as_deref().unwrap_or_default();
    let json: Option<Value> = serde_json::from_slice(body).ok();
    Some(
        match json.as_ref().and_then(|v| v["error"]["message"].as_str()) {
            Some(message) => format!("the upgrade was refused: {} {message}", status.as_u16()),
            None => format!(
                "the server answered the WebSocket upgrade with {status}: it is not an hrrt \
             server, or --url has the wrong host or path"
            ),
        },
    )
}

/// The innermost cause, which names what actually failed (e.g.
/// "Connection refused") instead of reqwest's generic outer message.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Turns an error answer into a message that says what to do.
/// `minted`: the token was minted from `--secret` (not a `--token`).
pub fn explain(status: u16, body: &Value, role: &str, minted: bool) -> String {
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    match status {
        // The server's word for a bad signature (AuthError::Invalid); a
        // token this command minted a moment ago has nothing else wrong.
        401 if minted && message == hrrt_protocol::AuthError::Invalid.detail() => {
            format!(
                "401 unauthorized: the server refused the token minted with --secret: {WRONG_SECRET}"
            )
        }
        401 => format!(
            "401 unauthorized: {message}. This needs a valid {role} token: pass --token, \
             or --secret (HRRT_JWT_SECRET) to mint one"
        ),
        403 => format!(
            "403 forbidden: {message} (this needs {} token)",
            crate::output::article(role)
        ),
        _ => format!("{status}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(t.ws.as_str(), "ws://127.0.0.1:8000/");
        let t = Target::parse("wss://rt.example.com/base/").unwrap();
        assert_eq!(t.http.as_str(), "https://rt.example.com/base/");
        assert!(Target::parse("ftp://x").is_err());
        // Without a scheme: http://.
        let t = Target::parse("127.0.0.1:8000").unwrap();
        assert_eq!(t.http.as_str(), "http://127.0.0.1:8000/");
        let t = Target::parse("localhost:8000").unwrap();
        assert_eq!(t.ws.as_str(), "ws://localhost:8000/");
        let e = Target::parse("ws//typo").unwrap_err().to_string();
        assert!(e.contains("did you mean ws://typo"), "{e}");
        assert!(Target::parse("a b:80").is_err());
    }
}
