//! `hrrt token mint` and `hrrt token inspect`.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hrrt_protocol::auth::{AuthError, Claims, Role, Verifier, mint, unix_now};
use hrrt_protocol::{OrgId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::args::{GlobalArgs, SecretArgs};
use crate::exit::ExitStatus;
use crate::output::{self, BOLD, DIM, ERROR, NOTE, paint};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new token signed with --secret.
    Mint(MintArgs),
    /// Show a token's claims, whether it is valid, and when it expires.
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct MintArgs {
    #[command(flatten)]
    pub secret: SecretArgs,
    /// The user id (`sub`).
    #[arg(long, value_parser = crate::args::user_id)]
    pub user: String,
    /// The organisation id (`org_id`); required for user and admin tokens.
    #[arg(long, value_parser = crate::args::org_id)]
    pub org: Option<String>,
    /// user (connects to /ws), admin (watches orgs, reads stats) or service
    /// (publishes).
    #[arg(long, default_value = "user")]
    pub role: Role,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = hrrt_protocol::positive_duration)]
    pub ttl: Duration,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub secret: SecretArgs,
    /// The token; `-` reads it from stdin.
    #[arg(env = "HRRT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: TokenArgs, top: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    match args.command {
        TokenCommand::Mint(args) => mint_cmd(args, top),
        TokenCommand::Inspect(args) => inspect(args, top),
    }
}

fn mint_cmd(args: MintArgs, top: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    let Some(secret) = top.secret.as_ref().or(args.secret.secret.as_ref()) else {
        bail!("minting needs the server's secret: pass --secret or set HRRT_JWT_SECRET");
    };
    UserId::new(&args.user).context("invalid --user")?;
    if let Some(org) = &args.org {
        OrgId::new(org).context("invalid --org")?;
    } else if args.role != Role::Service {
        bail!("--org is required for a {} token", args.role.as_str());
    }
    let claims = Claims::new(
        &args.user,
        args.org.as_deref(),
        args.role,
        args.ttl.as_secs(),
    );
    output::line(&mint(secret, &claims).context("signing the token")?)?;
    Ok(ExitStatus::Ok)
}

/// What `inspect` concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Valid,
    /// Well-formed and not expired; the signature was not checked.
    Unverified,
    Expired,
    BadSignature,
    /// Signed correctly but refused by the server's rules (claims).
    Refused,
    /// Signed correctly, but issued (or valid from) further in the future
    /// than the default clock skew allows.
    FromTheFuture,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Unverified => "unverified",
            Self::Expired => "expired",
            Self::BadSignature => "invalid signature",
            Self::Refused => "invalid claims",
            Self::FromTheFuture => "not yet valid",
        }
    }
}

fn inspect(args: InspectArgs, top: &GlobalArgs) -> anyhow::Result<ExitStatus> {
    let secret = top.secret.as_ref().or(args.secret.secret.as_ref());
    let token = match args.token.as_deref() {
        Some("-") => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading the token from stdin")?;
            text.trim().to_owned()
        }
        Some(token) => token.trim().to_owned(),
        None => match &top.token {
            Some(token) => token.clone(),
            None => bail!("no token to inspect: pass it as an argument, or - for stdin"),
        },
    };

    let header = match jsonwebtoken::decode_header(&token) {
        Ok(header) => header,
        Err(e) => {
            output::line(&format!("{} not a JWT: {e}", paint(ERROR, "malformed:")))?;
            return Ok(ExitStatus::Failed);
        }
    };
    let claims: Value = match jsonwebtoken::dangerous::insecure_decode_claims(&token) {
        Ok(claims) => claims,
        Err(e) => {
            output::line(&format!(
                "{} claims are not JSON: {e}",
                paint(ERROR, "malformed:")
            ))?;
            return Ok(ExitStatus::Failed);
        }
    };
    let exp = numeric_date(&claims["exp"]);
    let now = unix_now();
    let verdict = judge(&token, secret.map(String::as_str), exp, now);

    if args.json {
        let out = serde_json::json!({
            "verdict": verdict.as_str(),
            "alg": format!("{:?}", header.alg),
            "claims": claims,
            "expires_in_seconds": exp.map(|exp| exp as i64 - now as i64),
        });
        output::line(&out.to_string())?;
    } else {
        print_human(&header, &claims, verdict, exp, now)?;
    }
    Ok(match verdict {
        Verdict::Valid | Verdict::Unverified => ExitStatus::Ok,
        _ => ExitStatus::Failed,
    })
}

/// The verdict on `token`: checked against `secret` when there is one,
/// else only its expiry.
fn judge(token: &str, secret: Option<&str>, exp: Option<u64>, now: u64) -> Verdict {
    let Some(secret) = secret else {
        return if exp.is_none_or(|exp| exp <= now) {
            Verdict::Expired
        } else {
            Verdict::Unverified
        };
    };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let signed = jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .is_ok();
    match (signed, Verifier::new(secret).verify(token)) {
        (false, _) => Verdict::BadSignature,
        (true, Ok(_)) => Verdict::Valid,
        (true, Err(AuthError::Expired)) => Verdict::Expired,
        (true, Err(AuthError::FromTheFuture)) => Verdict::FromTheFuture,
        (true, Err(_)) => Verdict::Refused,
    }
}

/// The claims a line each, times with how far from now, and the verdict.
fn print_human(
    header: &jsonwebtoken::Header,
    claims: &Value,
    verdict: Verdict,
    exp: Option<u64>,
    now: u64,
) -> anyhow::Result<()> {
    output::line(&format!("{}  {:?}", paint(DIM, "alg      "), header.alg))?;
    if let Some(map) = claims.as_object() {
        for (key, value) in map {
            let shown = match (key.as_str(), numeric_date(value)) {
                ("exp" | "iat" | "nbf", Some(t)) => {
                    format!("{t}  {}", paint(DIM, when(t, now)))
                }
                _ => match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
            };
            output::line(&format!("{}  {shown}", paint(DIM, format!("{key:<9}"))))?;
        }
    }
    let style = match verdict {
        Verdict::Valid => NOTE,
        Verdict::Unverified => BOLD,
        _ => ERROR,
    };
    let detail = match (verdict, exp) {
        (Verdict::Unverified, _) => {
            " (signature not checked: pass --secret to check it)".to_owned()
        }
        (Verdict::Valid | Verdict::Expired, Some(exp)) => format!(" ({})", when(exp, now)),
        (Verdict::FromTheFuture, _) => format!(
            " ({})",
            AuthError::FromTheFuture
                .detail()
                .trim_start_matches("invalid token: ")
        ),
        (Verdict::Refused, _) => {
            " (the server would refuse it: needs sub, exp, and org_id unless role is service)"
                .to_owned()
        }
        _ => String::new(),
    };
    output::line(&format!(
        "{}  {}{detail}",
        paint(DIM, "status   "),
        paint(style, verdict.as_str())
    ))?;
    Ok(())
}

/// A NumericDate claim (a JSON number, maybe with a fraction) in whole
/// seconds, rounded down; `None` if it is not one.
fn numeric_date(value: &Value) -> Option<u64> {
    let secs = value.as_f64()?;
    (secs.is_finite() && secs >= 0.0 && secs <= hrrt_protocol::auth::MAX_TIMESTAMP as f64)
        .then(|| secs.floor() as u64)
}

/// `2026-11-26T15:00:00Z, in 59m 12s` or `…, 3m ago`.
fn when(t: u64, now: u64) -> String {
    let at = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t));
    let span = |secs: u64| humantime::format_duration(Duration::from_secs(secs)).to_string();
    if t > now {
        format!("{at}, in {}", span(t - now))
    } else {
        format!("{at}, {} ago", span(now - t))
    }
}
