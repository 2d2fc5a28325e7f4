//! The command line: global flags and one subcommand.

use clap::{Args, Parser, Subcommand};

use crate::commands::admin::{DisconnectArgs, HistoryArgs, NodesArgs, StatsArgs};
use crate::commands::completions::CompletionsArgs;
use crate::commands::dash::DashArgs;
use crate::commands::listen::ListenArgs;
use crate::commands::load::LoadArgs;
use crate::commands::publish::PublishArgs;
use crate::commands::scenario::ScenarioArgs;
use crate::commands::serve::ServeArgs;
use crate::commands::token::TokenArgs;

/// hrrt: realtime events for the HR application — serve, listen, publish,
/// mint tokens.
#[derive(Debug, Parser)]
#[command(name = "hrrt", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level spellings of the server flags (`hrrt --url X listen`),
/// accepted for scripts written that way; each command shows its own.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    #[arg(long, hide = true)]
    pub url: Option<String>,
    #[arg(long, hide = true, value_parser = non_empty_secret)]
    pub secret: Option<String>,
    #[arg(long, hide = true)]
    pub token: Option<String>,
}

/// How a command reaches a server: the flags of every command that talks
/// to one.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The server's URL (http:// is assumed without a scheme); the
    /// WebSocket URL is derived from it.
    #[arg(long, env = "HRRT_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,

    /// The server's JWT secret, so commands can mint their own tokens.
    #[arg(long, env = "HRRT_JWT_SECRET", hide_env_values = true,
          value_parser = non_empty_secret)]
    pub secret: Option<String>,

    /// A token to use instead of minting one.
    #[arg(long, env = "HRRT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ServerArgs {
    /// A top-level flag given before the command wins over the
    /// environment the command's own flags fell back to.
    pub fn under(mut self, top: &GlobalArgs) -> Self {
        if let Some(url) = &top.url {
            self.url.clone_from(url);
        }
        if top.secret.is_some() {
            self.secret.clone_from(&top.secret);
        }
        if top.token.is_some() {
            self.token.clone_from(&top.token);
        }
        self
    }
}

/// The secret alone, for commands that mint or check tokens offline.
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// The server's JWT secret.
    #[arg(long, env = "HRRT_JWT_SECRET", hide_env_values = true,
          value_parser = non_empty_secret)]
    pub secret: Option<String>,
}

/// An empty secret signs tokens that only a misconfigured server accepts
/// (and hrrt-server refuses to start with one): say so here instead.
fn non_empty_secret(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the secret is empty (is HRRT_JWT_SECRET set to nothing?)".to_owned());
    }
    Ok(s.to_owned())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the realtime server (the same as `hrrt-server`).
    Serve(ServeArgs),
    /// Mint and inspect tokens.
    Token(TokenArgs),
    /// Watch events as a user (or an admin) sees them.
    Listen(ListenArgs),
    /// Publish one event, or a batch from a file.
    Publish(PublishArgs),
    /// Load-test: N connections over K orgs, R events/s for D; checks every
    /// delivery and reports latency, throughput and losses.
    Load(LoadArgs),
    /// The live terminal dashboard: connections per org, the event stream,
    /// rates (as an admin).
    Dash(DashArgs),
    /// QA scenarios: run YAML scenario files (or print their schema).
    Scenario(ScenarioArgs),
    /// What the node is doing: connections per org, events per type.
    Stats(StatsArgs),
    /// The live nodes of the cluster.
    Nodes(NodesArgs),
    /// A channel's retained events, oldest first.
    History(HistoryArgs),
    /// Close every connection of a user on every node (and optionally
    /// refuse their earlier tokens).
    Disconnect(DisconnectArgs),
    /// Print shell completions.
    Completions(CompletionsArgs),
}

/// `--org`: an org id as the server takes it, refused here (with the fix)
/// when it cannot be what was meant.
pub fn org_id(s: &str) -> Result<String, String> {
    id_arg("org", s).and_then(|id| {
        hrrt_protocol::OrgId::new(&id)
            .map(|_| id)
            .map_err(|e| format!("{e}"))
    })
}

/// `--user`: a user id, as [`org_id`].
pub fn user_id(s: &str) -> Result<String, String> {
    id_arg("user", s).and_then(|id| {
        hrrt_protocol::UserId::new(&id)
            .map(|_| id)
            .map_err(|e| format!("{e}"))
    })
}

/// A channel name (`org:7`, `user:42`).
pub fn channel(s: &str) -> Result<String, String> {
    hrrt_protocol::ChannelName::parse(s)
        .map(|c| c.to_string())
        .map_err(|e| e.to_string())
}

fn id_arg(kind: &str, s: &str) -> Result<String, String> {
    for prefix in ["org:", "user:"] {
        if let Some(id) = s.strip_prefix(prefix) {
            return Err(format!(
                "'{s}' is a channel name; --{kind} takes the id alone: --{kind} {id}"
            ));
        }
    }
    if s == "*" {
        return Err(format!(
            "'*' is not {} id (every org is watched with `listen --orgs '*'` or `dash`)",
            crate::output::article(kind)
        ));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_anything_is_sent() {
        assert_eq!(org_id("7").as_deref(), Ok("7"));
        assert!(org_id("org:7").unwrap_err().contains("--org 7"));
        assert!(org_id("*").unwrap_err().contains("not an org id"));
        assert!(org_id("a b").unwrap_err().contains("whitespace"));
        assert!(user_id("user:42").unwrap_err().contains("--user 42"));
        assert!(user_id("").is_err());
        assert_eq!(channel("org:7").as_deref(), Ok("org:7"));
        assert!(channel("7").is_err());
    }
}
