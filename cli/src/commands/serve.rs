//! `hrrt serve`: the server, with the same flags as `hrrt-server`.

use std::process::ExitCode;

use clap::Args;
use hrrt_server::Config;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: Config,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    hrrt_server::launch::init_tracing();
    hrrt_server::launch::launch(args.config).await?;
    Ok(ExitCode::SUCCESS)
}
