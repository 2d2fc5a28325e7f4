//! What `hrrt-server` and `hrrt serve` run: resolve the secret (or make one
//! with `--dev`), bind, print the dev banner, serve until SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::app::{AppState, ServerError, serve};
use crate::auth::{Claims, Role, mint};
use crate::config::{Config, MIN_SECRET_BYTES};

/// Sets up `tracing` with `RUST_LOG`-style filtering (default `info`) on
/// stderr.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the server from its flags until a shutdown signal.
pub async fn launch(mut config: Config) -> Result<(), ServerError> {
    let shutdown = shutdown_signal();
    if config.dev && config.jwt_secret.is_none() {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| ServerError::Io(std::io::Error::other(e)))?;
        config.jwt_secret = Some(secret.iter().map(|b| format!("{b:02x}")).collect());
    }
    config.validate()?;
    if config.secret_is_short() {
        tracing::warn!(
            "the JWT secret is shorter than {MIN_SECRET_BYTES} bytes; \
             use a long random one (e.g. `openssl rand -hex 32`)"
        );
    }
    let listener = bind(config.listen).map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr()?;
    // The engine first (Redis connected, its revocations read): a Redis
    // that cannot be used ends the start with its one line, before any
    // line says the server listens.
    let state = AppState::new(config.clone()).await?;
    tracing::info!(%addr, engine = state.engine.kind(), "listening");
    if config.dev {
        print_dev_banner(&config, addr);
    }
    serve(listener, state, shutdown).await
}

/// The most handshakes waiting to be accepted. tokio's default (1024)
/// drops SYNs during a reconnect storm, which costs clients a one-second
/// retransmit; the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

/// Binds like `TcpListener::bind`, with a deeper accept queue.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A future that resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are
/// installed here, not when the future is first polled: a signal that
/// arrives while the server is still starting must shut it down (exit 0),
/// not kill it with the default action.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).ok();
        let mut term = signal(SignalKind::terminate()).ok();
        async move {
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = int => {}
                () = term => {}
            }
            tracing::info!("shutdown signal received");
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown signal received");
    }
}

fn print_dev_banner(config: &Config, addr: SocketAddr) {
    let Some(secret) = config.jwt_secret.as_deref() else {
        return;
    };
    let host = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let user = mint(secret, &Claims::new("42", Some("7"), Role::User, 3600)).unwrap_or_default();
    let service =
        mint(secret, &Claims::new("backend", None, Role::Service, 3600)).unwrap_or_default();
    // Lines are joined explicitly: a `\` line continuation in a string
    // literal would eat the indentation that makes the commands stand out.
    let lines = [
        String::new(),
        format!("hrrt dev mode: listening on http://{host} (memory engine)"),
        "a new secret is generated at every start; never use --dev in production.".to_owned(),
        String::new(),
        format!("  export HRRT_JWT_SECRET={secret}"),
        format!("  export HRRT_URL=http://{host}"),
        "  hrrt listen --user 42 --org 7".to_owned(),
        "  hrrt publish entity.created --org 7 --payload '{\"id\":1}'".to_owned(),
        String::new(),
        "browser (user 42 of org 7, valid 1h):".to_owned(),
        format!("  new WebSocket('ws://{host}/ws?token={user}')"),
        String::new(),
        "publish with curl (service token, valid 1h):".to_owned(),
        format!("  curl -s http://{host}/api/events -H 'Authorization: Bearer {service}' \\"),
        "    -H 'Content-Type: application/json' \\".to_owned(),
        "    -d '{\"type\":\"entity.created\",\"org_id\":\"7\",\"payload\":{\"id\":1}}'".to_owned(),
        String::new(),
    ];
    let text = lines.join("\n") + "\n";
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
