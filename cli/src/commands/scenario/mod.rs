//! `hrrt scenario`: QA scenarios as YAML files, run against a server, with
//! a line per step, a summary, and JUnit or JSON reports.

mod format;
mod isolate;
mod matcher;
mod runner;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hrrt_server::Config;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};

pub use self::format::{Scenario, parse_file, parse_str, schema};
pub use self::runner::{Env, ScenarioOutcome};
use crate::args::{GlobalArgs, ServerArgs};
use crate::client::Target;
use crate::exit::ExitStatus;
use crate::output::{self, DIM, ERROR, NOTE, paint};

#[derive(Debug, Args)]
pub struct ScenarioArgs {
    #[command(subcommand)]
    pub command: ScenarioCommand,
}

#[derive(Debug, Subcommand)]
pub enum ScenarioCommand {
    /// Run scenario files; exit 0 only when every step of every scenario held.
    Run(RunArgs),
    /// Print the JSON Schema of the scenario format (for editors).
    Schema,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub server: crate::args::ServerArgs,
    /// Scenario files (YAML; several scenarios per file separated by ---).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Run each scenario against its own embedded server on a free
    /// loopback port, instead of --url.
    #[arg(long)]
    pub spawn: bool,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Print the outcome as JSON on stdout instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Scenarios run at once (with --spawn each has its own server; against
    /// a shared --url, scenarios must not use the same ids).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parallel: u64,
    /// Run only scenarios whose name contains this text.
    #[arg(long, value_name = "NAME")]
    pub filter: Option<String>,
}

pub async fn run(args: ScenarioArgs, top: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    match args.command {
        ScenarioCommand::Schema => {
            output::line(&serde_json::to_string_pretty(&schema())?)?;
            Ok(ExitStatus::Ok)
        }
        ScenarioCommand::Run(args) => {
            let server = args.server.clone().under(top);
            run_files(args, &server).await
        }
    }
}

async fn run_files(args: RunArgs, global: &ServerArgs) -> anyhow::Result<ExitStatus> {
    // Everything is parsed and checked before anything runs.
    let mut work: Vec<(String, Scenario)> = Vec::new();
    for path in &args.files {
        let scenarios = parse_file(path).map_err(anyhow::Error::msg)?;
        for scenario in scenarios {
            if args
                .filter
                .as_deref()
                .is_none_or(|f| scenario.name.contains(f))
            {
                work.push((path.display().to_string(), scenario));
            }
        }
    }
    if work.is_empty() {
        bail!("no scenario matches --filter");
    }
    if !args.spawn && global.secret.is_none() {
        bail!(
            "scenarios mint their clients' and publisher's tokens: pass --secret \
             (or HRRT_JWT_SECRET) with --url, or --spawn for an embedded server"
        );
    }
    let shared = if args.spawn {
        None
    } else {
        let target = Target::parse(&global.url)?;
        let mut env = Env {
            api: crate::client::Api::new(target.clone())?,
            target,
            secret: global.secret.clone(),
            token_check: runner::DEFAULT_TOKEN_CHECK,
        };
        if let Some(warning) = env.read_settings().await {
            output::warn(&warning);
        }
        Some(env)
    };

    let permits = Arc::new(Semaphore::new(usize::try_from(args.parallel).unwrap_or(1)));
    let mut handles = Vec::new();
    for (file, scenario) in work {
        let permits = permits.clone();
        let shared = shared.clone();
        handles.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            match shared {
                Some(env) => Ok(runner::run(&env, &file, &scenario).await),
                None => {
                    let server = Embedded::start().await?;
                    let outcome = runner::run(&server.env, &file, &scenario).await;
                    server.stop().await;
                    Ok::<_, anyhow::Error>(outcome)
                }
            }
        }));
    }
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(handle.await.context("a scenario task failed")??);
    }

    if args.json {
        output::line(&serde_json::to_string_pretty(&outcomes)?)?;
    } else {
        output::line(&human(&outcomes))?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, junit(&outcomes))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if outcomes.iter().all(|o| o.passed) {
        ExitStatus::Ok
    } else {
        ExitStatus::Failed
    })
}

/// An in-process server on a free loopback port, for `--spawn`.
struct Embedded {
    env: Env,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), hrrt_server::ServerError>>,
}

impl Embedded {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port for --spawn")?;
        let addr = listener.local_addr()?;
        let secret = crate::random_hex(16);
        let mut config = Config::with_secret(&secret);
        config.listen = addr;
        // Token expiry is checked often so expiry scenarios finish quickly.
        config.token_check_interval = Duration::from_millis(250);
        let config_token_check = config.token_check_interval;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(hrrt_server::run(listener, config, async {
            let _ = stopped.await;
        }));
        let target = Target::parse(&format!("http://{addr}"))?;
        Ok(Self {
            env: Env {
                api: crate::client::Api::new(target.clone())?,
                target,
                secret: Some(secret),
                token_check: config_token_check,
            },
            stop,
            task,
        })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// A line per step with ✓/✗ and its time, then a summary.
fn human(outcomes: &[ScenarioOutcome]) -> String {
    let mut s = String::new();
    let mut file = "";
    for outcome in outcomes {
        if outcome.file != file {
            file = &outcome.file;
            let _ = writeln!(s, "{file}");
        }
        let mark = if outcome.passed {
            paint(NOTE, "✓")
        } else {
            paint(ERROR, "✗")
        };
        let _ = writeln!(
            s,
            "  {mark} {} {}",
            outcome.name,
            paint(DIM, format!("({} ms)", outcome.millis))
        );
        for step in &outcome.steps {
            let mark = match step.status {
                "passed" => paint(NOTE, "✓"),
                "failed" => paint(ERROR, "✗"),
                _ => paint(DIM, "-"),
            };
            let _ = writeln!(
                s,
                "      {mark} {:>2}. {} {}",
                step.number,
                step.step,
                paint(
                    DIM,
                    if step.status == "skipped" {
                        "skipped".to_owned()
                    } else {
                        format!("{} ms", step.millis)
                    }
                )
            );
            if let Some(note) = &step.note {
                let _ = writeln!(s, "          {}", paint(DIM, note));
            }
            if let Some(error) = &step.error {
                let _ = writeln!(s, "          {}", paint(ERROR, error));
            }
        }
    }
    let failed: Vec<&ScenarioOutcome> = outcomes.iter().filter(|o| !o.passed).collect();
    for outcome in &failed {
        if let Some(step) = outcome.failure() {
            let _ = writeln!(
                s,
                "{} {}: scenario '{}', step {} ({}): {}",
                paint(ERROR, "FAILED"),
                outcome.file,
                outcome.name,
                step.number,
                step.step,
                step.error.as_deref().unwrap_or("")
            );
        }
    }
    let steps: usize = outcomes.iter().map(|o| o.steps.len()).sum();
    let _ = write!(
        s,
        "{} passed, {} failed ({}, {})",
        outcomes.len() - failed.len(),
        failed.len(),
        output::count(outcomes.len() as u64, "scenario"),
        output::count(steps as u64, "step")
    );
    s
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One `<testsuite>` per file, one `<testcase>` per scenario.
pub fn junit(outcomes: &[ScenarioOutcome]) -> String {
    let mut files: Vec<&str> = Vec::new();
    for o in outcomes {
        if !files.contains(&o.file.as_str()) {
            files.push(&o.file);
        }
    }
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for file in files {
        let cases: Vec<&ScenarioOutcome> = outcomes.iter().filter(|o| o.file == file).collect();
        let failures = cases.iter().filter(|o| !o.passed).count();
        let time: u128 = cases.iter().map(|o| o.millis).sum();
        let _ = writeln!(
            s,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">",
            xml(file),
            cases.len(),
            time as f64 / 1000.0
        );
        for case in cases {
            let _ = write!(
                s,
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
                xml(&case.name),
                xml(file),
                case.millis as f64 / 1000.0
            );
            match case.failure() {
                None => s.push_str("/>\n"),
                Some(step) => {
                    let message = format!(
                        "step {} ({}): {}",
                        step.number,
                        step.step,
                        step.error.as_deref().unwrap_or("")
                    );
                    let _ = writeln!(
                        s,
                        ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        xml(&message),
                        xml(&message)
                    );
                }
            }
        }
        s.push_str("  </testsuite>\n");
    }
    s.push_str("</testsuites>\n");
    s
}
