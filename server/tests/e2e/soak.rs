//! The Redis soak (`scripts/soak.sh`, not in CI): 3 node processes and a
//! Redis with AOF; a few hundred connections that drop and resume at
//! random on random nodes; a publisher that retries under idempotency
//! keys; nodes killed (-9) and restarted, `CLIENT KILL TYPE pubsub` and
//! Redis restarts on a schedule. At the end every connection must hold
//! every accepted event of its channel from its first position on, in
//! order, once, or a `resync.required` that covers the gap.
//!
//! `SOAK_SECS` (default 600) sets the length; `SOAK_CLIENTS` (300) the
//! connections.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hrrt_server::auth::Role;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use hrrt_testkit::TestRedis;

const ORGS: u64 = 10;

/// A small xorshift: the soak needs spread, not quality.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    publish_failures: AtomicU64,
    deliveries: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    violations: AtomicU64,
    node_kills: AtomicU64,
    pubsub_kills: AtomicU64,
    redis_restarts: AtomicU64,
}

struct World {
    ports: Vec<u16>,
    redis_url: String,
    stop: AtomicBool,
    /// The latest accepted seq per org once publishing stopped: a client
    /// holding it is done.
    finished: std::sync::OnceLock<HashMap<u64, u64>>,
    /// Past the catch-up window: every client stops.
    give_up: AtomicBool,
    counts: Counts,
    /// The latest accepted seq per org.
    latest: std::sync::Mutex<HashMap<u64, u64>>,
    resyncs: std::sync::Mutex<BTreeMap<String, u64>>,
}

async fn spawn_node(world: &World, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hrrt-server"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis-url",
            &world.redis_url,
        ])
        .env("HRRT_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// One client: connects to random nodes, reads its org's channel, drops
/// and resumes at random; answers (its org, the last seq it holds).
async fn client(world: Arc<World>, id: u64) -> (u64, u64) {
    let org = id % ORGS;
    let channel = format!("org:{org}");
    let mut rng = Rng::new(id + 1);
    let mut last: Option<u64> = None;
    let mut epoch: Option<String> = None;
    let token = token(&format!("u{id}"), &org.to_string(), Role::User);
    let done = |last: Option<u64>| {
        world.give_up.load(Ordering::Relaxed)
            || world
                .finished
                .get()
                .is_some_and(|f| last.unwrap_or(0) >= f.get(&org).copied().unwrap_or(0))
    };
    while !done(last) {
        let port = world.ports[rng.below(world.ports.len() as u64) as usize];
        let mut url = format!("ws://127.0.0.1:{port}/ws?token={token}");
        if let (Some(last), Some(epoch)) = (last, &epoch) {
            url.push_str(&format!("&since={channel}@{last}&epoch={epoch}"));
        }
        let Ok(Ok((mut ws, _))) = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(url),
        )
        .await
        else {
            world
                .counts
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
            continue;
        };
        world.counts.connects.fetch_add(1, Ordering::Relaxed);
        // Stay 1-20 s, then drop as a closed laptop would.
        let stay = tokio::time::sleep(Duration::from_millis(1000 + rng.below(19_000)));
        tokio::pin!(stay);
        loop {
            let frame = tokio::select! {
                () = &mut stay => break,
                frame = tokio::time::timeout(Duration::from_secs(5), ws.next()) => frame,
            };
            let text = match frame {
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(_))) => continue,
                // Closed, failed, or silent for 5 s (a killed node): go.
                _ => break,
            };
            if done(last) {
                break;
            }
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            match v["type"].as_str() {
                Some("connected") => {
                    epoch = v["payload"]["epoch"].as_str().map(str::to_owned);
                    if last.is_none() {
                        last = v["payload"]["positions"][&channel].as_u64();
                    }
                }
                Some("resync.required") if v["payload"]["channel"] == channel.as_str() => {
                    let reason = v["payload"]["reason"].as_str().unwrap_or("?").to_owned();
                    *world.resyncs.lock().unwrap().entry(reason).or_default() += 1;
                    if let Some(e) = v["payload"]["epoch"].as_str() {
                        epoch = Some(e.to_owned());
                    }
                    // What follows continues from `oldest`.
                    last = v["payload"]["oldest"].as_u64().map(|o| o.saturating_sub(1));
                }
                Some("entity.created") => {
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    world.counts.deliveries.fetch_add(1, Ordering::Relaxed);
                    if let Some(l) = last
                        && seq != l + 1
                    {
                        world.counts.violations.fetch_add(1, Ordering::Relaxed);
                        eprintln!("client {id}: {channel} seq {seq} after {l}");
                    }
                    last = Some(seq);
                }
                _ => {}
            }
            if done(last) {
                break;
            }
        }
        drop(ws);
        tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
    }
    (org, last.unwrap_or(0))
}

async fn publisher(world: Arc<World>) {
    let http = http_client();
    let token = service_token();
    let mut rng = Rng::new(7);
    let mut n: u64 = 0;
    while !world.stop.load(Ordering::Relaxed) {
        n += 1;
        let org = rng.below(ORGS);
        let body = json!({"type": "entity.created", "org_id": org.to_string(),
            "payload": {"n": n}, "idempotency_key": format!("soak-{n}")});
        let mut done = false;
        for _ in 0..100 {
            let port = world.ports[rng.below(world.ports.len() as u64) as usize];
            let sent = http
                .post(format!("http://127.0.0.1:{port}/api/events"))
                .bearer_auth(&token)
                .json(&body)
                .timeout(Duration::from_secs(8))
                .send()
                .await;
            if let Ok(response) = sent
                && response.status() == 200
                && let Ok(ack) = response.json::<Value>().await
            {
                let seq = ack["seq"].as_u64().unwrap_or(0);
                let mut latest = world.latest.lock().unwrap();
                let l = latest.entry(org).or_default();
                *l = (*l).max(seq);
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if done {
            world.counts.accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            world
                .counts
                .publish_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 10-minute soak; run scripts/soak.sh"]
async fn soak() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let clients: u64 = std::env::var("SOAK_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let _ = rlimit::increase_nofile_limit(20_000);
    let redis = Arc::new(Mutex::new(TestRedis::start(true).await));
    let redis_url = redis.lock().await.url();
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let world = Arc::new(World {
        ports: ports.clone(),
        redis_url,
        stop: AtomicBool::new(false),
        finished: std::sync::OnceLock::new(),
        give_up: AtomicBool::new(false),
        counts: Counts::default(),
        latest: Default::default(),
        resyncs: Default::default(),
    });
    let mut nodes = Vec::new();
    for port in &ports {
        nodes.push(spawn_node(&world, *port).await);
    }
    // Every node answers before anyone connects (bounded: 20 s).
    let http = http_client();
    for port in &ports {
        let mut up = false;
        for _ in 0..200 {
            if let Ok(r) = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                && r.status() == 200
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(up, "node on {port} never became ready");
    }

    let readers: Vec<_> = (0..clients)
        .map(|id| tokio::spawn(client(world.clone(), id)))
        .collect();
    let publishing = tokio::spawn(publisher(world.clone()));

    // The schedule of faults, one step a second.
    let started = Instant::now();
    let mut rng = Rng::new(99);
    let mut restart_at: Option<(usize, Instant)> = None;
    let mut t = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        t += 1;
        if let Some((i, at)) = restart_at
            && Instant::now() >= at
        {
            nodes[i] = spawn_node(&world, ports[i]).await;
            restart_at = None;
        }
        if t % 30 == 10 && restart_at.is_none() {
            let i = rng.below(3) as usize;
            let _ = nodes[i].start_kill();
            let _ = nodes[i].wait().await;
            world.counts.node_kills.fetch_add(1, Ordering::Relaxed);
            restart_at = Some((i, Instant::now() + Duration::from_secs(2)));
        }
        if t % 45 == 20 {
            let client = redis::Client::open(redis.lock().await.url()).unwrap();
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let _: Result<u64, _> = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(&mut conn)
                    .await;
                world.counts.pubsub_kills.fetch_add(1, Ordering::Relaxed);
            }
        }
        if t % 120 == 60 {
            let mut r = redis.lock().await;
            r.stop().await;
            r.run().await;
            world.counts.redis_restarts.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some((i, _)) = restart_at {
        nodes[i] = spawn_node(&world, ports[i]).await;
    }
    // Faults stop; publishing stops; every client gets 30 s to catch up
    // (a reconnect and a resume at most) before it is stopped.
    world.stop.store(true, Ordering::Relaxed);
    let _ = publishing.await;
    let latest = world.latest.lock().unwrap().clone();
    let _ = world.finished.set(latest.clone());
    let give_up = {
        let world = world.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            world.give_up.store(true, Ordering::Relaxed);
        })
    };
    let mut incomplete = 0;
    for reader in readers {
        // Each ends within its connection's stay (20 s) past give-up.
        match tokio::time::timeout(Duration::from_secs(60), reader).await {
            Ok(Ok((org, last))) => {
                if last < latest.get(&org).copied().unwrap_or(0) {
                    incomplete += 1;
                }
            }
            _ => incomplete += 1,
        }
    }
    give_up.abort();
    let c = &world.counts;
    let report = json!({
        "seconds": secs,
        "clients": clients,
        "events_accepted": c.accepted.load(Ordering::Relaxed),
        "publishes_given_up": c.publish_failures.load(Ordering::Relaxed),
        "deliveries": c.deliveries.load(Ordering::Relaxed),
        "connects": c.connects.load(Ordering::Relaxed),
        "connect_failures": c.connect_failures.load(Ordering::Relaxed),
        "node_kills": c.node_kills.load(Ordering::Relaxed),
        "pubsub_kills": c.pubsub_kills.load(Ordering::Relaxed),
        "redis_restarts": c.redis_restarts.load(Ordering::Relaxed),
        "resyncs": *world.resyncs.lock().unwrap(),
        "order_violations": c.violations.load(Ordering::Relaxed),
        "clients_missing_events_at_the_end": incomplete,
    });
    println!("soak report: {report}");
    assert_eq!(report["order_violations"], 0, "{report}");
    assert_eq!(report["clients_missing_events_at_the_end"], 0, "{report}");
    assert_eq!(report["publishes_given_up"], 0, "{report}");
}
