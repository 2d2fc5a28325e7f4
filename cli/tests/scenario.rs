//! `hrrt scenario` on the real binary: the scenario library passes, a wrong
//! scenario fails with a useful message, bad files are refused up front.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_hrrt");

fn hrrt(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("HRRT_URL")
        .env_remove("HRRT_JWT_SECRET")
        .output()
        .unwrap()
}

fn library() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".yaml"))
        .collect();
    files.sort();
    files
}

fn temp(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("hrrt-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_scenario_library_passes_with_a_junit_report() {
    let junit = std::env::temp_dir().join(format!("hrrt-junit-{}.xml", std::process::id()));
    let mut args = vec![
        "scenario",
        "run",
        "--spawn",
        "--parallel",
        "4",
        "--junit",
        junit.to_str().unwrap(),
    ];
    let files = library();
    assert!(files.len() >= 8, "{files:?}");
    args.extend(files.iter().map(String::as_str));
    let out = hrrt(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    std::fs::remove_file(&junit).unwrap();
    assert!(
        xml.starts_with("<?xml") && xml.contains("<testsuite name=") && !xml.contains("<failure"),
        "{xml}"
    );
    assert_eq!(xml.matches("<testsuite ").count(), files.len());
}

#[test]
fn a_wrong_scenario_fails_and_says_what_it_got() {
    let file = temp(
        "wrong.yaml",
        "name: wrong audience\n\
         clients:\n  alice: {user: 1, org: 7}\n\
         steps:\n  - connect: alice\n  - publish: {type: entity.created, org_id: 8, payload: {id: 1}}\n  \
         - expect: {client: alice, type: entity.created, within: 300ms}\n  - sleep: 1ms\n",
    );
    let out = hrrt(&["scenario", "run", "--spawn", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("✗ wrong audience"), "{stdout}");
    let failure = stdout
        .lines()
        .find(|l| l.starts_with("FAILED"))
        .expect("a FAILED line");
    assert!(
        failure.contains("wrong.yaml")
            && failure.contains("scenario 'wrong audience'")
            && failure.contains("step 3"),
        "{failure}"
    );
    assert!(
        failure.contains("alice got no entity.created within 300ms; it received: connected"),
        "{failure}"
    );
    assert!(
        stdout.contains("- ") && stdout.contains("skipped"),
        "later steps are skipped: {stdout}"
    );
    assert!(
        stdout.ends_with("0 passed, 1 failed (1 scenario, 4 steps)\n"),
        "{stdout}"
    );
}

#[test]
fn bad_files_are_refused_before_anything_runs() {
    let typo = temp(
        "typo.yaml",
        "name: x\nclients:\n  alice: {user: 1, org: 7}\nsteps:\n  - conect: alice\n",
    );
    let out = hrrt(&["scenario", "run", "--spawn", typo.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("typo.yaml:5:") && stderr.contains("did you mean `connect`?"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing ran");

    let undefined = temp(
        "undefined.yaml",
        "name: y\nclients:\n  alice: {user: 1, org: 7}\nsteps:\n  - expect: {client: bob}\n",
    );
    let out = hrrt(&[
        "scenario",
        "run",
        "--spawn",
        typo.to_str().unwrap(),
        undefined.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = hrrt(&["scenario", "run", "--spawn", undefined.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("scenario 'y': step 1: no client named 'bob'"),
        "{stderr}"
    );
    let missing = hrrt(&["scenario", "run", "--spawn", "/nonexistent/x.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&missing.stderr).contains("panicked"));
    std::fs::remove_file(&typo).unwrap();
    std::fs::remove_file(&undefined).unwrap();
}

#[test]
fn the_schema_is_json_schema() {
    let out = hrrt(&["scenario", "schema"]);
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema["$schema"].as_str().unwrap().contains("json-schema"));
    assert_eq!(schema["title"], "Scenario");
}

#[test]
fn json_output_lists_every_step() {
    let file = library()
        .into_iter()
        .find(|f| f.ends_with("envelope.yaml"))
        .unwrap();
    let out = hrrt(&[
        "scenario",
        "run",
        "--spawn",
        "--json",
        "--filter",
        "missing payload",
        &file,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.as_array().unwrap().len(), 1);
    assert_eq!(report[0]["passed"], true);
    assert_eq!(report[0]["steps"][2]["status"], "passed");
}

/// The library against one long-running server shared by several runs:
/// `--url`, with channels freed between runs so that a new channel starts
/// above seq 1 (the memory engine's floor), then two runs at once.
#[tokio::test]
async fn the_library_passes_against_one_shared_server_run_after_run_and_side_by_side() {
    use std::time::Duration;

    use hrrt_testkit::{SECRET, TestServer, within_for};
    let server = TestServer::with(|c| {
        c.history_ttl = Duration::from_secs(1);
        c.token_check_interval = Duration::from_millis(500);
    })
    .await;
    let url = server.url();
    let files = library();
    let run = || {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args([
            "scenario",
            "run",
            "--parallel",
            "8",
            "--url",
            &url,
            "--secret",
            SECRET,
        ])
        .args(&files)
        .env("NO_COLOR", "1")
        .env_remove("HRRT_URL")
        .env_remove("HRRT_JWT_SECRET")
        .kill_on_drop(true);
        async move {
            let out = within_for(Duration::from_secs(120), cmd.output())
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains(" 0 failed"), "{stdout}");
        }
    };
    run().await;
    // Until the runs' channels are freed: a channel never used then starts
    // above seq 1 (bounded: 10 s).
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let token = hrrt_protocol::mint(
        SECRET,
        &hrrt_protocol::Claims::new("t", None, hrrt_protocol::Role::Service, 60),
    )
    .unwrap();
    within_for(Duration::from_secs(10), async {
        for probe in 0.. {
            let answer: serde_json::Value = http
                .post(format!("{url}/api/events"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"type": "entity.created", "org_id": format!("probe-{probe}")}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if answer["seq"].as_u64() > Some(1) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    tokio::join!(run(), run());
}
