//! One module per subcommand.

pub mod serve;

use std::process::ExitCode;

use crate::args::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
    }
}
