//! The flags of `hrrt load`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub server: crate::args::ServerArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub connections: u64,
    /// Organisations the connections are spread over (round-robin).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub orgs: u64,
    /// Events published per second, in total over all orgs.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How long to publish, e.g. 30s.
    #[arg(long, default_value = "10s", value_parser = hrrt_protocol::positive_duration)]
    pub duration: Duration,
    /// Events per publish request (POST /api/events takes a batch).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub batch: u64,
    /// Connections opened per second at most.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_rate: u64,
    /// Local addresses to connect from, round-robin (each gives ~28k
    /// ports; 127.0.0.2 and up work on Linux without set-up).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub source_ips: Vec<IpAddr>,
    /// Extra bytes of padding in each event's payload.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=(1 << 20)))]
    pub payload_bytes: u64,
    /// User-channel traffic beside the org events: this many `share.created`
    /// events a second, each to the user of one random connection (its
    /// own channel), with its own latency line in the report.
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub user_rate: f64,
    /// Churn: this many random connections a second drop during the
    /// publish phase and reconnect after a random pause of at most 1 s, to
    /// a random node of --nodes, resuming with `since` + `epoch`.
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub churn: f64,
    /// Worker processes that hold the connections (each gets its own
    /// open-file limit; this process publishes and reports for all).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub workers: u64,
    /// Internal: this process is worker I of --workers.
    #[arg(long, hide = true)]
    pub worker_index: Option<u64>,
    /// Internal: the run a worker belongs to.
    #[arg(long, hide = true)]
    pub run_id: Option<String>,
    /// Test-only: resume this many seqs past what was received, as a
    /// broken client would; the report must show the loss.
    #[arg(long, default_value_t = 0, hide = true)]
    pub churn_skip: u64,
    /// Publish requests in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub publishers: u64,
    /// How long to wait for the last deliveries after publishing.
    #[arg(long, default_value = "5s", value_parser = hrrt_protocol::positive_duration)]
    pub drain: Duration,
    /// Spread the connections round-robin over these nodes (a cluster
    /// sharing one Redis) instead of --url; the report adds a line per node.
    #[arg(long, value_name = "URL,URL,…", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Publish through these nodes (round-robin per request) instead of
    /// --nodes (or --url), e.g. connections on some nodes, events entering
    /// through others.
    #[arg(long, value_name = "URL,URL,…", value_delimiter = ',')]
    pub publish_url: Vec<String>,
    /// The server's process id: report its RSS per connection and CPU time.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the full report as JSON on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Also write the full report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write one CSV line per event to this file: its number, org, when it
    /// was published (ms into the publish phase, and Unix ms), how long its
    /// publish request took to be answered and how long its last recipient
    /// waited, to see when the slow ones happened.
    #[arg(long, value_name = "FILE")]
    pub per_event: Option<PathBuf>,
    /// Exit 1 unless these hold, e.g. 'p99<20ms,lost=0'.
    #[arg(long, value_name = "RULES")]
    pub fail_on: Option<String>,
    /// No progress bars (they are hidden anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}
