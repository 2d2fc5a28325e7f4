//! Redis Sentinel: a real primary, a replica and three `redis-sentinel`
//! processes on free loopback ports; nodes connect with
//! `redis+sentinel://…/mymaster`. A failover (`SENTINEL FAILOVER`, then a
//! `kill -9` of the new primary) is survived: publishing and delivery
//! resume on the new primary, and a client sees every event in order or a
//! `resync.required`, never a silent gap.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::harness::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn available(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One Redis or Sentinel process, killed when dropped.
struct Proc {
    port: u16,
    child: Child,
}

impl Proc {
    async fn spawn(program: &str, args: &[String], port: u16) -> Self {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let proc = Self { port, child };
        // Answers PING (bounded: 10 s).
        for _ in 0..200 {
            if proc.query::<String>(&["PING"]).await.is_ok() {
                return proc;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{program} on port {port} never answered");
    }

    async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        tokio::time::timeout(Duration::from_secs(2), cmd.query_async(&mut conn))
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })?
    }
}

/// Polls `check` every 100 ms until it holds (bounded by `limit`).
async fn until<F: Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {limit:?}");
}

struct Cluster {
    dir: PathBuf,
    redis: Vec<Proc>,
    sentinels: Vec<Proc>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    async fn start() -> Option<Self> {
        if !(available("redis-server") && available("redis-sentinel")) {
            assert!(
                std::env::var_os("HRRT_REQUIRE_REDIS").is_none(),
                "redis-server or redis-sentinel is not installed, and HRRT_REQUIRE_REDIS is set"
            );
            eprintln!(
                "skipping: redis-server and redis-sentinel are needed (scripts/test.sh installs them)"
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "hrrt-sentinel-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let server_args = |port: u16, replica_of: Option<u16>| {
            let data = dir.join(format!("r{port}"));
            std::fs::create_dir_all(&data).unwrap();
            let mut args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                data.to_str().unwrap(),
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            if let Some(primary) = replica_of {
                args.extend([
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    primary.to_string(),
                ]);
            }
            args
        };
        let (p, r) = (free_port(), free_port());
        let primary = Proc::spawn("redis-server", &server_args(p, None), p).await;
        let replica = Proc::spawn("redis-server", &server_args(r, Some(p)), r).await;
        until("the replica syncs", Duration::from_secs(15), || async {
            replica
                .query::<String>(&["INFO", "replication"])
                .await
                .is_ok_and(|info| info.contains("master_link_status:up"))
        })
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor mymaster 127.0.0.1 {p} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 4000\n\
                     sentinel parallel-syncs mymaster 1\n",
                    dir.display()
                ),
            )
            .unwrap();
            sentinels.push(
                Proc::spawn("redis-sentinel", &[conf.to_str().unwrap().to_owned()], port).await,
            );
        }
        // Each Sentinel knows the replica and the two other Sentinels
        // (needed to agree on a failover after a kill).
        for s in &sentinels {
            until(
                "the sentinels know each other and the replica",
                Duration::from_secs(30),
                || async {
                    let replicas: Vec<Value> = s
                        .query::<redis::Value>(&["SENTINEL", "replicas", "mymaster"])
                        .await
                        .map(|v| match v {
                            redis::Value::Array(a) => a.into_iter().map(|_| Value::Null).collect(),
                            _ => Vec::new(),
                        })
                        .unwrap_or_default();
                    let others = match s
                        .query::<redis::Value>(&["SENTINEL", "sentinels", "mymaster"])
                        .await
                    {
                        Ok(redis::Value::Array(a)) => a.len(),
                        _ => 0,
                    };
                    !replicas.is_empty() && others == 2
                },
            )
            .await;
        }
        Some(Self {
            dir,
            redis: vec![primary, replica],
            sentinels,
        })
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/mymaster", hosts.join(","))
    }

    async fn master_port(&self) -> Option<u16> {
        let addr: Vec<String> = self.sentinels[0]
            .query(&["SENTINEL", "get-master-addr-by-name", "mymaster"])
            .await
            .ok()?;
        addr.get(1)?.parse().ok()
    }
}

/// Publishes until the node answers 200 (bounded: 30 s): the answer's seq.
async fn publish_until_accepted(node: &Server, n: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = node
            .publish(json!({"type": "entity.created", "org_id": "7", "payload": {"n": n}}))
            .await;
        if status == 200 {
            return body["seq"].as_u64().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "publishing never resumed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads until the event with payload `n`; every event before it must
/// follow `last` in seq order unless a `resync.required` came first.
async fn read_until(client: &mut Client, n: u64, last: &mut u64) {
    for _ in 0..50 {
        let frame = client.next_event().await;
        if frame["type"] == "resync.required" {
            *last = 0;
            continue;
        }
        let seq = frame["seq"].as_u64().unwrap();
        if *last != 0 {
            assert_eq!(seq, *last + 1, "a gap with no resync: {frame}");
        }
        *last = seq;
        if frame["payload"]["n"].as_u64() == Some(n) {
            return;
        }
    }
    panic!("event {n} never arrived");
}

#[tokio::test]
async fn a_sentinel_failover_and_a_killed_primary_are_survived() {
    let Some(mut cluster) = Cluster::start().await else {
        return;
    };
    let url = cluster.url();
    let a = Server::with({
        let url = url.clone();
        move |c| c.redis_url = Some(url)
    })
    .await;
    let b = Server::with(move |c| c.redis_url = Some(url)).await;
    let mut client = b.connect("1", "7").await;
    let mut last = 0;
    publish_until_accepted(&a, 1).await;
    read_until(&mut client, 1, &mut last).await;

    // A planned failover: the replica becomes the primary.
    let first = cluster.master_port().await.unwrap();
    let _: String = cluster.sentinels[0]
        .query(&["SENTINEL", "FAILOVER", "mymaster"])
        .await
        .unwrap();
    until("the failover", Duration::from_secs(30), || async {
        cluster.master_port().await.is_some_and(|p| p != first)
    })
    .await;
    publish_until_accepted(&a, 2).await;
    read_until(&mut client, 2, &mut last).await;
    assert_eq!(a.get("/readyz", None).await.0, 200);

    // The new primary is killed: the Sentinels agree and promote the old.
    let second = cluster.master_port().await.unwrap();
    let victim = cluster
        .redis
        .iter_mut()
        .find(|r| r.port == second)
        .expect("the new primary is one of ours");
    victim.child.start_kill().unwrap();
    let _ = within(victim.child.wait()).await;
    until(
        "the failover after the kill",
        Duration::from_secs(40),
        || async { cluster.master_port().await.is_some_and(|p| p != second) },
    )
    .await;
    publish_until_accepted(&a, 3).await;
    read_until(&mut client, 3, &mut last).await;
}
