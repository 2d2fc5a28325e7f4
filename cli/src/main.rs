//! `hrrt`: the operator and QA toolkit. Exit codes: [`hrrt_cli::exit`].

use std::process::ExitCode;

use clap::Parser;
use hrrt_cli::exit::{ExitStatus, status_of};
use hrrt_cli::{args, commands, output};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = args::Cli::parse();
    hrrt_cli::client::install_tls();
    let status = match commands::run(cli).await {
        Ok(status) => status,
        // `hrrt listen | head`: the reader left, which is not an error.
        Err(e) if output::is_broken_pipe(&e) => ExitStatus::Ok,
        Err(e) => {
            output::error(&e);
            status_of(&e)
        }
    };
    status.into()
}
