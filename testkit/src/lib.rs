//! hrrt-testkit: what every test crate of the workspace starts and waits
//! with, written once. Dev-only (`publish = false`).
//!
//! - [`within`]: every network wait is bounded, so a hang fails the test
//!   instead of the CI run.
//! - [`TestServer`]: an in-process server on `127.0.0.1:0`, bound before it
//!   is spawned, so no readiness wait is needed.
//! - [`TestRedis`]: a real `redis-server` on a free loopback port, in its
//!   own directory; [`TestRedis::start_or_skip`] skips with a clear line
//!   when `redis-server` is missing, except under `HRRT_REQUIRE_REDIS=1`
//!   (`scripts/test.sh` sets it, after installing Redis), so CI always runs
//!   the Redis tests.
//!
//! The dashboard's screen capture is `hrrt_tui::screen`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hrrt_server::{AppState, Config, ServerError};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The secret every [`TestServer`] signs with.
pub const SECRET: &str = "testkit-secret-testkit-secret-ok";

/// How long [`within`] waits.
pub const WITHIN: Duration = Duration::from_secs(10);

/// Fails the test instead of hanging when something never happens.
pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    within_for(WITHIN, fut).await
}

/// [`within`] with another bound.
pub async fn within_for<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?}"),
    }
}

/// A directory of its own for one test, removed when dropped.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// A new empty directory under the system's temporary directory.
    pub fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hrrt-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An in-process `hrrt-server` on `127.0.0.1:0`.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The server's state, for tests that reach into the hub or tasks.
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    /// The memory engine with the flags' defaults and [`SECRET`].
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// The defaults, changed by `configure` (`c.redis_url = …` for Redis).
    pub async fn with(configure: impl FnOnce(&mut Config)) -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), configure).await
    }

    /// [`TestServer::with`] on a listener the test bound (to restart a
    /// server on the address it had).
    pub async fn on(listener: TcpListener, configure: impl FnOnce(&mut Config)) -> Self {
        let addr = listener.local_addr().unwrap();
        let mut config = Config::with_secret(SECRET);
        config.listen = addr;
        configure(&mut config);
        let state = AppState::new(config).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(hrrt_server::serve(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            state,
            stop: Some(stop),
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts down (SIGTERM's path) and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within(&mut self.task).await.unwrap()
    }
}

/// A `redis-server` child process on a free port, in its own directory.
pub struct TestRedis {
    port: u16,
    dir: PathBuf,
    persistent: bool,
    /// More `redis-server` arguments (a password, TLS).
    extra: Vec<String>,
    /// With TLS: the port speaks only TLS, and this is the CA that signed
    /// its certificate.
    tls_ca: Option<PathBuf>,
    child: Option<Child>,
}

/// Whether `redis-server` can be run here.
pub fn redis_available() -> bool {
    std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl TestRedis {
    /// Starts one, or says why the test is skipped and answers `None`
    /// (`redis-server` missing). With `HRRT_REQUIRE_REDIS=1` a missing
    /// `redis-server` fails the test instead.
    pub async fn start_or_skip(persistent: bool) -> Option<Self> {
        if !redis_available() {
            assert!(
                std::env::var_os("HRRT_REQUIRE_REDIS").is_none(),
                "redis-server is not installed, and HRRT_REQUIRE_REDIS is set"
            );
            eprintln!(
                "skipping: redis-server is not installed (scripts/test.sh installs it; \
                 apt-get install redis-server)"
            );
            return None;
        }
        Some(Self::start(persistent).await)
    }

    /// Starts one; panics with a clear message if it cannot.
    pub async fn start(persistent: bool) -> Self {
        Self::start_with(persistent, &[]).await
    }

    /// Starts one with more `redis-server` arguments (say
    /// `["--requirepass", "pw"]`).
    pub async fn start_with(persistent: bool, extra: &[&str]) -> Self {
        let mut redis = Self::prepare(persistent, extra);
        redis.run().await;
        redis
    }

    /// Starts one whose port speaks only TLS, with a certificate for
    /// 127.0.0.1 signed by a CA made for it ([`TestRedis::tls_ca`]).
    /// Needs `openssl` (scripts/test.sh installs it).
    pub async fn start_tls(extra: &[&str]) -> Self {
        let mut redis = Self::prepare(false, extra);
        let ca = make_certificates(&redis.dir);
        let file = |name: &str| redis.dir.join(name).to_str().unwrap().to_owned();
        let port = redis.port.to_string();
        redis.extra.extend([
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port,
            "--tls-cert-file".to_owned(),
            file("server.pem"),
            "--tls-key-file".to_owned(),
            file("server.key"),
            "--tls-ca-cert-file".to_owned(),
            file("ca.pem"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ]);
        redis.tls_ca = Some(ca);
        redis.run().await;
        redis
    }

    fn prepare(persistent: bool, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("hrrt-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            port,
            dir,
            persistent,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            tls_ca: None,
            child: None,
        }
    }

    /// The CA of a [`TestRedis::start_tls`] Redis (a PEM file).
    pub fn tls_ca(&self) -> Option<&std::path::Path> {
        self.tls_ca.as_deref()
    }

    /// Starts the process (again, after [`TestRedis::stop`]) and waits for
    /// "Ready to accept connections".
    pub async fn run(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--dir", self.dir.to_str().unwrap()])
        .args(["--appendonly", if self.persistent { "yes" } else { "no" }])
        .args(&self.extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .expect("redis-server is needed for these tests (scripts/test.sh installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut said = Vec::new();
        loop {
            let Some(line) = within(lines.next_line()).await.unwrap() else {
                panic!(
                    "redis-server exited before it was ready:\n{}",
                    said.join("\n")
                );
            };
            if line.contains("Ready to accept connections") {
                break;
            }
            said.push(line);
        }
        // Keep draining its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    /// `redis://127.0.0.1:<port>/`, or `rediss://…` for a TLS Redis.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGTERM: a persistent Redis writes its data out before exiting.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().unwrap().to_string();
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap();
            within(child.wait()).await.unwrap();
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`
/// (`ca.pem`, `server.pem`, `server.key`); answers the CA's path.
fn make_certificates(dir: &std::path::Path) -> PathBuf {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed for the TLS tests (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=hrrt test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    dir.join("ca.pem")
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
