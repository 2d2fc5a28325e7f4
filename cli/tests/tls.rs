//! `hrrt load --url https://…` speaks TLS, both for its WebSocket
//! connections and for its publishes: a real server behind a TLS
//! terminator the test starts, whose certificate is signed by the test CA
//! in `fixtures/tls/` (`SSL_CERT_FILE` makes the CLI trust it, as it makes
//! every rustls-native-certs user trust it). Without that CA the same run
//! fails on the certificate, so the bytes really went through TLS.
//!
//! The fixtures were made with:
//! `openssl req -x509 -newkey rsa:2048 -nodes -days 36500 -subj /CN=hrrt-test-ca`
//! and a `localhost` leaf with `subjectAltName=DNS:localhost,IP:127.0.0.1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hrrt_testkit::{SECRET, TestServer, within_for};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const BIN: &str = env!("CARGO_BIN_EXE_hrrt");

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// What the terminator saw.
#[derive(Default)]
struct Seen {
    handshakes: AtomicUsize,
    refused: AtomicUsize,
}

/// Accepts TLS on a free loopback port and forwards the plaintext to
/// `upstream`; counts the handshakes that completed and those that failed.
async fn terminator(upstream: std::net::SocketAddr) -> (u16, Arc<Seen>) {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(fixture("localhost.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("localhost.key")).unwrap();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = counts.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(_) => {
                        seen.refused.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
                seen.handshakes.fetch_add(1, Ordering::SeqCst);
                let Ok(mut plain) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, seen)
}

async fn load(url: &str, trust_test_ca: bool, report: Option<&PathBuf>) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["--url", url, "--secret", SECRET, "load"])
        .args(["--connections", "20", "--orgs", "2", "--rate", "50"])
        .args(["--duration", "1s", "--fail-on", "lost=0,duplicated=0"])
        .env_remove("HRRT_JWT_SECRET")
        .env_remove("HRRT_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(report) = report {
        cmd.arg("--report").arg(report);
    }
    if trust_test_ca {
        cmd.env("SSL_CERT_FILE", fixture("ca.pem"));
    } else {
        // Only the system's roots, which never signed the test CA.
        cmd.env_remove("SSL_CERT_FILE");
    }
    let out = within_for(std::time::Duration::from_secs(60), cmd.output())
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn load_over_https_speaks_tls_end_to_end() {
    let server = TestServer::start().await;
    let (port, seen) = terminator(server.addr).await;
    let url = format!("https://localhost:{port}");
    let report = std::env::temp_dir().join(format!("hrrt-tls-load-{}.json", std::process::id()));

    let (code, stderr) = load(&url, true, Some(&report)).await;
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["connections"]["ok"], 20, "{report}");
    assert_eq!(report["events"]["published"], 50, "{report}");
    assert_eq!(report["events"]["lost"], 0, "{report}");
    assert_eq!(report["events"]["delivered"], 50 * 10, "{report}");
    // 20 WebSocket connections and at least one publishing connection, all
    // through the terminator; none of them spoke plaintext to it.
    assert!(seen.handshakes.load(Ordering::SeqCst) > 20);
    assert_eq!(seen.refused.load(Ordering::SeqCst), 0);

    // The same run without the test CA stops on the certificate.
    let before = seen.handshakes.load(Ordering::SeqCst);
    let (code, stderr) = load(&url, false, None).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.to_lowercase().contains("certificate"),
        "the error names the certificate: {stderr}"
    );
    assert_eq!(seen.handshakes.load(Ordering::SeqCst), before);
    server.stop().await.unwrap();
}
