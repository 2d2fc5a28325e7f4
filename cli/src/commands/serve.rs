//! `hrrt serve`: the server, with the same flags as `hrrt-server`.

use clap::Args;
use hrrt_server::Config;

use crate::exit::ExitStatus;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: Config,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitStatus> {
    hrrt_server::launch::init_tracing();
    hrrt_server::launch::launch(args.config).await?;
    Ok(ExitStatus::Ok)
}
