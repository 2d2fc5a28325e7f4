//! Redis as it is deployed: a password, an ACL user, TLS with a CA of its
//! own, Sentinels and a master that all want a password. Each Redis is a
//! real `redis-server` (and `redis-sentinel`) started by the test; the
//! certificates are made by `openssl`.

use std::process::Stdio;
use std::time::Duration;

use hrrt_server::{AppState, Config};
use serde_json::json;

use crate::harness::*;
use hrrt_testkit::TestRedis;

/// The error a node that cannot use `url` starts with (bounded: a wrong
/// setting is never a hang).
async fn refused(url: &str, ca: Option<&std::path::Path>) -> String {
    let mut config = Config::with_secret(SECRET);
    config.redis_url = Some(url.to_owned());
    config.redis_ca = ca.map(std::path::Path::to_path_buf);
    match within(AppState::new(config)).await {
        Ok(_) => panic!("{url} was used"),
        Err(e) => {
            let e = e.to_string();
            assert_eq!(e.lines().count(), 1, "{e}");
            e
        }
    }
}

async fn works(url: &str, ca: Option<&std::path::Path>) {
    let (url, ca) = (url.to_owned(), ca.map(std::path::Path::to_path_buf));
    let server = Server::with(move |c| {
        c.redis_url = Some(url);
        c.redis_ca = ca;
    })
    .await;
    let mut client = server.connect("1", "7").await;
    let seq = server.publish_org("7", "entity.created", json!({})).await;
    assert_eq!(client.next_event().await["seq"], seq);
}

#[tokio::test]
async fn a_password_and_an_acl_user_are_used_and_a_wrong_one_is_named() {
    if TestRedis::start_or_skip(false).await.is_none() {
        return;
    }
    let redis = TestRedis::start_with(
        false,
        &[
            "--requirepass",
            "s3cr3t",
            "--user",
            "app",
            "on",
            ">app-pw",
            "~*",
            "&*",
            "+@all",
        ],
    )
    .await;
    let port = redis.port();
    works(&format!("redis://:s3cr3t@127.0.0.1:{port}/"), None).await;
    works(&format!("redis://app:app-pw@127.0.0.1:{port}/2"), None).await;
    let e = refused(&format!("redis://:wrong-pw@127.0.0.1:{port}/"), None).await;
    assert!(e.contains("WRONGPASS") && e.contains("--redis-url"), "{e}");
    assert!(
        !e.contains("wrong-pw"),
        "the password is in the message: {e}"
    );
    let e = refused(&format!("redis://127.0.0.1:{port}/"), None).await;
    assert!(e.contains("NOAUTH") && e.contains("password"), "{e}");
}

#[tokio::test]
async fn a_tls_redis_is_used_with_its_ca_and_an_untrusted_certificate_is_named() {
    if TestRedis::start_or_skip(false).await.is_none() {
        return;
    }
    let redis = TestRedis::start_tls(&["--requirepass", "pw"]).await;
    let ca = redis.tls_ca().unwrap().to_path_buf();
    let port = redis.port();
    let url = format!("rediss://:pw@127.0.0.1:{port}/");
    works(&url, Some(&ca)).await;
    let e = refused(&url, None).await;
    assert!(e.contains("not trusted") && e.contains("--redis-ca"), "{e}");
    // Plain text to the TLS port, and TLS to a plain port.
    let e = refused(&format!("redis://:pw@127.0.0.1:{port}/"), None).await;
    assert!(e.contains("rediss://"), "{e}");
    let plain = TestRedis::start(false).await;
    let e = refused(&format!("rediss://127.0.0.1:{}/", plain.port()), Some(&ca)).await;
    assert!(e.contains("TLS"), "{e}");
    let e = refused(&url, Some(std::path::Path::new("/nonexistent/ca.pem"))).await;
    assert!(e.contains("--redis-ca"), "{e}");
}

#[tokio::test]
async fn hrrt_server_with_a_wrong_redis_password_exits_2_with_one_line() {
    if TestRedis::start_or_skip(false).await.is_none() {
        return;
    }
    let redis = TestRedis::start_with(false, &["--requirepass", "right"]).await;
    let url = format!("redis://:wrong@127.0.0.1:{}/", redis.port());
    let (code, stderr) = crate::binary::output(&[
        "--jwt-secret",
        SECRET,
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &url,
    ])
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("WRONGPASS"), "{stderr}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn sentinels_and_a_master_that_want_passwords_are_all_given_theirs() {
    let Some(master) = TestRedis::start_or_skip(false).await else {
        return;
    };
    drop(master);
    let master = TestRedis::start_with(false, &["--requirepass", "master-pw"]).await;
    let dir = std::env::temp_dir().join(format!("hrrt-sentinel-auth-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut sentinels = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..2 {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nrequirepass sentinel-pw\n\
                 sentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel auth-pass mymaster master-pw\n",
                dir.display(),
                master.port()
            ),
        )
        .unwrap();
        sentinels.push(
            tokio::process::Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
        ports.push(port);
    }
    // The first Sentinel listed is down: the node must ask the others,
    // with their password.
    let hosts = format!(
        "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        free_port(),
        ports[0],
        ports[1]
    );
    let url = format!("redis+sentinel://:master-pw@{hosts}/mymaster?sentinel_password=sentinel-pw");
    // The Sentinels answer once they are up (bounded: 10 s).
    let mut used = None;
    for _ in 0..100 {
        let mut config = Config::with_secret(SECRET);
        config.redis_url = Some(url.clone());
        if let Ok(state) = within(AppState::new(config)).await {
            used = Some(state);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        used.is_some(),
        "the node never reached the master through the Sentinels"
    );
    works(&url, None).await;
    let e = refused(
        &format!("redis+sentinel://:master-pw@{hosts}/mymaster?sentinel_password=nope"),
        None,
    )
    .await;
    assert!(e.contains("Sentinels") && e.contains("WRONGPASS"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
