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
    let top = &cli.global;
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Token(args) => token::run(args, top),
        Command::Listen(args) => {
            let server = args.server.clone().under(top);
            listen::run(args, &server).await
        }
        Command::Publish(args) => {
            let server = args.server.clone().under(top);
            publish::run(args, &server).await
        }
        Command::Load(args) => {
            let server = args.server.clone().under(top);
            load::run(args, &server).await
        }
        Command::Dash(args) => {
            let server = args.server.clone().under(top);
            dash::run(args, &server).await
        }
        Command::Scenario(args) => scenario::run(args, top).await,
        Command::Stats(args) => {
            let server = args.server.clone().under(top);
            admin::stats(args, &server).await
        }
        Command::Nodes(args) => {
            let server = args.server.clone().under(top);
            admin::nodes(args, &server).await
        }
        Command::History(args) => {
            let server = args.server.clone().under(top);
            admin::history(args, &server).await
        }
        Command::Disconnect(args) => {
            let server = args.server.clone().under(top);
            admin::disconnect(args, &server).await
        }
        Command::Completions(args) => completions::run(args),
    }
}
