//! One module per subcommand; each has `XArgs` and `run`.

pub mod admin;
pub mod completions;
pub mod dash;
pub mod listen;
pub mod load;
pub mod publish;
pub mod scenario;
pub mod serve;
pub mod token;

use crate::args::{Cli, Command};
use crate::exit::ExitStatus;

pub async fn run(cli: Cli) -> anyhow::Result<ExitStatus> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Token(args) => token::run(args, &cli.global),
        Command::Listen(args) => listen::run(args, &cli.global).await,
        Command::Publish(args) => publish::run(args, &cli.global).await,
        Command::Load(args) => load::run(args, &cli.global).await,
        Command::Dash(args) => dash::run(args, &cli.global).await,
        Command::Scenario(args) => scenario::run(args, &cli.global).await,
        Command::Stats(args) => admin::stats(args, &cli.global).await,
        Command::Nodes(args) => admin::nodes(args, &cli.global).await,
        Command::History(args) => admin::history(args, &cli.global).await,
        Command::Disconnect(args) => admin::disconnect(args, &cli.global).await,
        Command::Completions(args) => completions::run(args),
    }
}
