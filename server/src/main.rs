//! `hrrt-server`: parse flags, run until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use hrrt_server::Config;

/// The hrrt realtime event server.
#[derive(Parser)]
#[command(name = "hrrt-server", version, about)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    hrrt_server::launch::init_tracing();
    match hrrt_server::launch::launch(cli.config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
