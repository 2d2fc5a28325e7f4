//! `hrrt`: the operator and QA toolkit. Exit codes: 0 success, 1 the thing
//! asked about failed (timeout, invalid token, rejected event), 2 usage,
//! config or connection error.

use std::process::ExitCode;

use clap::Parser;
use hrrt_cli::{args, commands, output};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = args::Cli::parse();
    hrrt_cli::client::install_tls();
    match commands::run(cli).await {
        Ok(code) => code,
        // `hrrt listen | head`: the reader left, which is not an error.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            output::error(&e);
            ExitCode::from(2)
        }
    }
}
