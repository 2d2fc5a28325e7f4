//! What `hrrt-server` and `hrrt serve` run: resolve the secret (or make one
//! with `--dev`), bind, print the dev banner, serve until SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

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
    let source = if config.jwt_secret.is_some() {
        SecretSource::Given
    } else if config.dev {
        let (secret, source) = dev_secret(config.new_secret)?;
        config.jwt_secret = Some(secret);
        source
    } else {
        SecretSource::Given
    };
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
        print_dev_banner(&config, addr, state.engine.kind(), &source);
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

/// Where the secret of this start came from, for the dev banner.
#[derive(Debug)]
enum SecretSource {
    /// --jwt-secret or HRRT_JWT_SECRET.
    Given,
    /// The dev state file; `made` when this start wrote it.
    Kept { path: PathBuf, made: bool },
    /// A new secret that could not be kept: it lasts this start only.
    Unsaved { why: String },
}

/// The file `--dev` keeps its secret in: `$XDG_STATE_HOME/hrrt/dev-secret`,
/// else `~/.local/state/hrrt/dev-secret` (the XDG base directory rules).
fn dev_secret_path() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let base = std::env::var_os("XDG_STATE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|home| home.join(".local").join("state"))
        })?;
    Some(base.join("hrrt").join("dev-secret"))
}

/// The dev secret: the one kept in the state file, or a new one kept there
/// (always new with `--new-secret`). A state directory that cannot be
/// written costs only the keeping, said in the banner.
fn dev_secret(renew: bool) -> Result<(String, SecretSource), ServerError> {
    let fresh = new_secret()?;
    let Some(path) = dev_secret_path() else {
        let why = "neither XDG_STATE_HOME nor HOME is set".to_owned();
        return Ok((fresh, SecretSource::Unsaved { why }));
    };
    if !renew && let Some(kept) = read_kept(&path) {
        return Ok((kept, SecretSource::Kept { path, made: false }));
    }
    // A file that holds no usable secret is replaced.
    match keep(&path, &fresh, renew || path.exists()) {
        Ok(()) => Ok((fresh, SecretSource::Kept { path, made: true })),
        // Another dev server started at the same moment and kept its own.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match read_kept(&path) {
            Some(kept) => Ok((kept, SecretSource::Kept { path, made: false })),
            None => Ok((fresh, unsaved(&path, &e))),
        },
        Err(e) => Ok((fresh, unsaved(&path, &e))),
    }
}

fn unsaved(path: &std::path::Path, e: &std::io::Error) -> SecretSource {
    SecretSource::Unsaved {
        why: format!("cannot write {}: {e}", path.display()),
    }
}

fn new_secret() -> Result<String, ServerError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| ServerError::Io(std::io::Error::other(e)))?;
    Ok(secret.iter().map(|b| format!("{b:02x}")).collect())
}

/// A kept secret, if the file holds one long enough to use.
fn read_kept(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let secret = text.trim();
    (secret.len() >= MIN_SECRET_BYTES).then(|| secret.to_owned())
}

/// Writes the secret whole before anyone can read it (a private temporary
/// file, then linked or renamed into place), readable by its owner only.
/// Without `replace`, an existing file wins (`AlreadyExists`).
fn keep(path: &std::path::Path, secret: &str, replace: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    let tmp = dir.join(format!(".dev-secret.{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(&tmp)
        .and_then(|mut f| f.write_all(format!("{secret}\n").as_bytes()))
        .and_then(|()| {
            if replace {
                std::fs::rename(&tmp, path)
            } else {
                std::fs::hard_link(&tmp, path)
            }
        });
    let _ = std::fs::remove_file(&tmp);
    written
}

fn print_dev_banner(config: &Config, addr: SocketAddr, engine: &str, source: &SecretSource) {
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
        format!("hrrt dev mode: listening on http://{host} ({engine} engine)"),
        match source {
            SecretSource::Given => {
                "the secret is the one --jwt-secret (HRRT_JWT_SECRET) gives.".to_owned()
            }
            SecretSource::Kept { path, made: true } => format!(
                "a new secret, kept in {} for the next start (--new-secret replaces it).",
                path.display()
            ),
            SecretSource::Kept { path, made: false } => format!(
                "the secret kept in {} (--new-secret replaces it): tokens from before still work.",
                path.display()
            ),
            SecretSource::Unsaved { why } => {
                format!("a new secret for this start only ({why}).")
            }
        },
        "never use --dev in production.".to_owned(),
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
