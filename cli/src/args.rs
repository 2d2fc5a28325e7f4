//! The command line: global flags and one subcommand.

use clap::{Parser, Subcommand};

use crate::commands::serve::ServeArgs;

/// hrrt: realtime events for the HR application — serve, listen, publish,
/// load-test, script scenarios, watch the dashboard.
#[derive(Debug, Parser)]
#[command(name = "hrrt", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the realtime server (the same as `hrrt-server`).
    Serve(ServeArgs),
}
