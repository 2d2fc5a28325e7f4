//! `hrrt`: the operator and QA toolkit.

use std::process::ExitCode;

use clap::Parser;

mod args;
mod commands;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match commands::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
