//! The one client of the hrrt server that every command uses: where the
//! server is, which token to send, the resume cursor, the WebSocket
//! connection and the HTTP API.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use hrrt_server::auth::{Claims, Role, mint};
use reqwest::Url;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::args::GlobalArgs;

/// A WebSocket connection to the server.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long connecting (TCP and handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's HTTP and WebSocket base URLs, from `--url`.
#[derive(Debug, Clone)]
pub struct Target {
    pub http: Url,
    pub ws: Url,
}

impl Target {
    /// Accepts `http://`, `https://`, `ws://` or `wss://` and derives the
    /// other scheme.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let parsed = Url::parse(url).with_context(|| format!("invalid --url '{url}'"))?;
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
    /// `--token` if given, else a token minted from `--secret` for `user`
    /// of `org` with `role`. `hint` says what to pass when neither is there.
    pub fn from_args(
        global: &GlobalArgs,
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
}

/// Where a client stands in each channel: the resume cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: Option<String>,
    pub positions: BTreeMap<String, u64>,
}

impl Cursor {
    /// Parses `org:7@41,user:42@3`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let entries = hrrt_server::protocol::parse_cursor(s)?;
        Ok(Self {
            epoch: None,
            positions: entries
                .into_iter()
                .map(|(c, seq)| (c.to_string(), seq))
                .collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// `org:7@41,user:42@3`.
    pub fn to_since(&self) -> String {
        self.positions
            .iter()
            .map(|(c, seq)| format!("{c}@{seq}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Takes the `connected` frame's epoch and positions. Within one epoch
    /// the cursor's own positions win (they are where the client really
    /// is); a new epoch restarts every position.
    pub fn on_connected(&mut self, payload: &Value) {
        let epoch = payload["epoch"].as_str().map(str::to_owned);
        if epoch != self.epoch {
            if self.epoch.is_some() {
                self.positions.clear();
            }
            self.epoch = epoch;
        }
        if let Some(positions) = payload["positions"].as_object() {
            for (channel, seq) in positions {
                if let Some(seq) = seq.as_u64() {
                    self.positions.entry(channel.clone()).or_insert(seq);
                }
            }
        }
    }

    /// Records an event's `channel` and `seq`.
    pub fn on_event(&mut self, event: &Value) {
        if let (Some(channel), Some(seq)) = (event["channel"].as_str(), event["seq"].as_u64()) {
            let position = self.positions.entry(channel.to_owned()).or_insert(0);
            *position = (*position).max(seq);
        }
    }
}

/// Opens `/ws` with `token` (sent as `Authorization: Bearer`, so it stays
/// out of access logs), resuming from `cursor`, watching `orgs` if given.
pub async fn connect(
    target: &Target,
    token: &str,
    cursor: &Cursor,
    orgs: Option<&str>,
) -> anyhow::Result<Ws> {
    install_tls();
    let request = ws_request(target, token, cursor, orgs)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => bail!("cannot connect to {}: {}", target.ws, root_cause(&e)),
        Err(_) => bail!(
            "cannot connect to {}: no answer within {}s",
            target.ws,
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

/// The handshake request for `/ws`.
pub fn ws_request(
    target: &Target,
    token: &str,
    cursor: &Cursor,
    orgs: Option<&str>,
) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let mut url = target.ws.join("/ws")?;
    {
        let mut query = url.query_pairs_mut();
        if !cursor.is_empty() {
            query.append_pair("since", &cursor.to_since());
            if let Some(epoch) = &cursor.epoch {
                query.append_pair("epoch", epoch);
            }
        }
        if let Some(orgs) = orgs {
            query.append_pair("orgs", orgs);
        }
    }
    let url_text = url.as_str().trim_end_matches('?').to_owned();
    let mut request = url_text.as_str().into_client_request()?;
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow!("the token is not a valid header value"))?;
    request.headers_mut().insert("authorization", bearer);
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
        let url = self.target.endpoint(path)?;
        let response = self
            .http
            .post(url.clone())
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach {url}: {}", root_cause(&e)))?;
        read_json(response).await
    }
}

impl Api {
    /// GETs a JSON endpoint with a bearer token.
    pub async fn get(&self, path: &str, token: &str) -> anyhow::Result<(u16, Value)> {
        let url = self.target.endpoint(path)?;
        let response = self
            .http
            .get(url.clone())
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach {url}: {}", root_cause(&e)))?;
        read_json(response).await
    }
}

async fn read_json(response: reqwest::Response) -> anyhow::Result<(u16, Value)> {
    let status = response.status().as_u16();
    let text = response.text().await.context("reading the answer")?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
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
pub fn explain(status: u16, body: &Value, role: &str) -> String {
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    match status {
        401 => format!(
            "401 unauthorized: {message}. This needs a valid {role} token: pass --token, \
             or --secret (HRRT_JWT_SECRET) to mint one"
        ),
        403 if message.contains("hrrt token mint") => format!("403 forbidden: {message}"),
        403 => format!(
            "403 forbidden: {message}. This needs a {role} token \
             (hrrt token mint --role {role} --user backend)"
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
        assert!(Target::parse("nonsense").is_err());
    }

    #[test]
    fn cursor_follows_events_and_epochs() {
        let mut c = Cursor::parse("org:7@41").unwrap();
        c.on_connected(
            &serde_json::json!({"epoch": "e1", "positions": {"org:7": 50, "user:1": 3}}),
        );
        assert_eq!(c.to_since(), "org:7@41,user:1@3");
        c.on_event(&serde_json::json!({"channel": "org:7", "seq": 42}));
        assert_eq!(c.to_since(), "org:7@42,user:1@3");
        c.on_connected(&serde_json::json!({"epoch": "e2", "positions": {"org:7": 2}}));
        assert_eq!(
            (c.epoch.as_deref(), c.to_since().as_str()),
            (Some("e2"), "org:7@2")
        );
    }
}
