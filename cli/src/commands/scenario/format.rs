//! The scenario file format (YAML), its parsing with positions and
//! suggestions, and its JSON Schema (`hrrt scenario schema`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// One scenario: named clients, then steps run in order. A file holds one
/// or more scenarios as YAML documents separated by `---`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows, e.g. "org events reach the whole org".
    pub name: String,
    /// The clients, by the names the steps use.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientSpec>,
    /// Keep the ids as written. By default every user and org id gets a
    /// suffix of its own for each run, so runs against a shared server
    /// never meet.
    #[serde(default)]
    pub pin_ids: bool,
    /// Each step is a map with one key naming it (`- connect: alice`).
    #[serde(with = "serde_yaml_ng::with::singleton_map_recursive")]
    #[schemars(with = "Vec<Step>")]
    pub steps: Vec<Step>,
}

/// A string or an integer, as ids are written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Id {
    Str(String),
    Int(i64),
}

impl Id {
    pub fn as_string(&self) -> String {
        match self {
            Id::Str(s) => s.clone(),
            Id::Int(i) => i.to_string(),
        }
    }
}

/// A client: who it is and how its token is made.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    /// The user id (`sub`).
    pub user: Option<Id>,
    /// The organisation id (`org_id`).
    pub org: Option<Id>,
    /// `user` (default), `admin` or `service`.
    pub role: Option<String>,
    /// Token lifetime, e.g. `1h` (default) or `2s`.
    pub ttl: Option<String>,
    /// Connect with a token that expired a minute ago.
    #[serde(default)]
    pub expired: bool,
    /// Connect with no token at all.
    #[serde(default)]
    pub missing: bool,
    /// Connect with a token signed with the wrong secret.
    #[serde(default)]
    pub invalid: bool,
    /// Use this token as given instead of minting one.
    pub token: Option<String>,
}

impl ClientSpec {
    /// Whether this client is set up to be refused at connect.
    pub fn expects_refusal(&self) -> bool {
        self.expired || self.missing || self.invalid || self.role.as_deref() == Some("service")
    }
}

/// One step. Each is a map with exactly one key naming the step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Open WebSockets: a client name, a list of names, or a map.
    Connect(ConnectStep),
    /// Close clients' WebSockets (a name or a list).
    Disconnect(Clients),
    /// Publish one event, or a batch, through the HTTP API.
    Publish(PublishStep),
    /// Each named client receives a matching event within a time.
    Expect(ExpectStep),
    /// No named client receives a matching event for a time.
    ExpectNone(ExpectNoneStep),
    /// The server closes the client with this code (and reason).
    ExpectClose(ExpectCloseStep),
    /// Send `auth.refresh` with a new token for the client.
    RefreshToken(RefreshStep),
    /// Wait, e.g. `500ms`.
    Sleep(String),
}

impl Step {
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Connect(_) => "connect",
            Step::Disconnect(_) => "disconnect",
            Step::Publish(_) => "publish",
            Step::Expect(_) => "expect",
            Step::ExpectNone(_) => "expect_none",
            Step::ExpectClose(_) => "expect_close",
            Step::RefreshToken(_) => "refresh_token",
            Step::Sleep(_) => "sleep",
        }
    }
}

/// One client name or several.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Clients {
    One(String),
    Many(Vec<String>),
}

impl Clients {
    pub fn names(&self) -> Vec<&str> {
        match self {
            Clients::One(name) => vec![name.as_str()],
            Clients::Many(names) => names.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ConnectStep {
    Plain(Clients),
    Detailed(ConnectOptions),
}

/// `connect` with options.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectOptions {
    pub client: Option<String>,
    pub clients: Option<Vec<String>>,
    /// Resume from this cursor, e.g. `org:7@3,user:1@0`.
    pub since: Option<String>,
    /// Resume from where this client was when it disconnected.
    #[serde(default)]
    pub resume: bool,
    /// Send this epoch with the cursor (default: the one last seen).
    pub epoch: Option<String>,
    /// Admin watch: `7,9` or `*`.
    pub orgs: Option<String>,
    /// The server is expected to refuse the connection.
    #[serde(default)]
    pub refused: bool,
}

impl ConnectStep {
    pub fn names(&self) -> Vec<&str> {
        match self {
            ConnectStep::Plain(clients) => clients.names(),
            ConnectStep::Detailed(o) => names_of(o.client.as_deref(), o.clients.as_deref()),
        }
    }
}

fn names_of<'a>(client: Option<&'a str>, clients: Option<&'a [String]>) -> Vec<&'a str> {
    let mut names: Vec<&str> = client.into_iter().collect();
    names.extend(clients.unwrap_or_default().iter().map(String::as_str));
    names
}

/// `publish`: an event (`type` and `org_id` or `user_id`), or a `batch`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishStep {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub org_id: Option<Id>,
    pub user_id: Option<Id>,
    pub payload: Option<Value>,
    pub idempotency_key: Option<String>,
    /// Several events, published as one batch, as `POST /api/events` takes them.
    pub batch: Option<Vec<Value>>,
    /// Send this text as the body, as is (for bad-JSON tests).
    pub raw: Option<String>,
    /// Publish with this client's token instead of a service token.
    #[serde(rename = "as")]
    pub as_client: Option<String>,
    /// The HTTP status expected (default 200).
    pub expect_status: Option<u16>,
}

/// What an event must look like to match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matcher {
    /// The event type; `*` and `?` are wildcards.
    pub kind: Option<String>,
    pub channel: Option<String>,
    pub seq: Option<u64>,
    /// A subset of the payload.
    pub payload: Option<Value>,
    /// Top-level fields that must be present.
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectStep {
    pub client: Option<String>,
    pub clients: Option<Vec<String>>,
    /// The event type; `*` and `?` are wildcards (`entity.*`).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The channel, e.g. `org:7`.
    pub channel: Option<String>,
    pub seq: Option<u64>,
    /// A subset of the payload: every key given must match.
    pub payload: Option<Value>,
    /// Top-level fields the frame must have, e.g. `[timestamp, seq]`.
    #[serde(default)]
    pub fields: Vec<String>,
    /// How long to wait, e.g. `2s` (default).
    pub within: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectNoneStep {
    pub client: Option<String>,
    pub clients: Option<Vec<String>>,
    /// The event type; `*` and `?` are wildcards (`entity.*`).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub channel: Option<String>,
    pub seq: Option<u64>,
    pub payload: Option<Value>,
    /// How long nothing may match, e.g. `300ms` (default).
    #[serde(rename = "for")]
    pub duration: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectCloseStep {
    pub client: String,
    pub code: u16,
    pub reason: Option<String>,
    pub within: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshStep {
    pub client: String,
    /// Lifetime of the new token (default `1h`).
    pub ttl: Option<String>,
    /// Sign the new token for another user (the server must refuse it).
    pub user: Option<Id>,
    /// Make the new token invalid (wrong secret).
    #[serde(default)]
    pub invalid: bool,
}

impl ExpectStep {
    pub fn names(&self) -> Vec<&str> {
        names_of(self.client.as_deref(), self.clients.as_deref())
    }

    pub fn matcher(&self) -> Matcher {
        Matcher {
            kind: self.kind.clone(),
            channel: self.channel.clone(),
            seq: self.seq,
            payload: self.payload.clone(),
            fields: self.fields.clone(),
        }
    }
}

impl ExpectNoneStep {
    pub fn names(&self) -> Vec<&str> {
        names_of(self.client.as_deref(), self.clients.as_deref())
    }

    pub fn matcher(&self) -> Matcher {
        Matcher {
            kind: self.kind.clone(),
            channel: self.channel.clone(),
            seq: self.seq,
            payload: self.payload.clone(),
            fields: Vec::new(),
        }
    }
}

/// Parses a duration field, naming it in the error.
pub fn duration(field: &str, value: Option<&str>, default: Duration) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(text) => hrrt_protocol::positive_duration(text).map_err(|e| format!("{field}: {e}")),
    }
}

/// Reads every scenario of a file, with `file:line:column` in errors and a
/// suggestion for a misspelt step or field.
pub fn parse_file(path: &Path) -> Result<Vec<Scenario>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_str(&path.display().to_string(), &text)
}

pub fn parse_str(origin: &str, text: &str) -> Result<Vec<Scenario>, String> {
    let mut scenarios = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let scenario = Scenario::deserialize(document).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("{origin}:{}:{}", l.line(), l.column()))
                .unwrap_or_else(|| origin.to_owned());
            let message = e.to_string();
            // The location is already in front.
            let message = match message.rsplit_once(" at line ") {
                Some((before, _)) if e.location().is_some() => before.to_owned(),
                _ => message,
            };
            format!("{at}: {}{}", count_from_one(&message), suggestion(&message))
        })?;
        validate(&scenario).map_err(|e| format!("{origin}: scenario '{}': {e}", scenario.name))?;
        scenarios.push(scenario);
    }
    if scenarios.is_empty() {
        return Err(format!("{origin}: no scenario in the file"));
    }
    Ok(scenarios)
}

/// serde's paths count from 0 (`steps[1]`); people count steps from 1, as
/// the run's output does (`step 2`).
fn count_from_one(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('[') {
        let (before, after) = rest.split_at(open);
        let Some(close) = after.find(']') else { break };
        let inner = &after[1..close];
        match inner.parse::<u64>() {
            Ok(n) => {
                let name = before
                    .rsplit(|c: char| !c.is_alphanumeric() && c != '_')
                    .next();
                match name {
                    Some(plural @ ("steps" | "events" | "clients")) => {
                        out.push_str(&before[..before.len() - plural.len()]);
                        out.push_str(&format!("{} {}", &plural[..plural.len() - 1], n + 1));
                    }
                    _ => {
                        out.push_str(before);
                        out.push_str(&format!(" #{}", n + 1));
                    }
                }
            }
            Err(_) => {
                out.push_str(before);
                out.push_str(&after[..=close]);
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// For serde's "unknown field `x`, expected one of `a`, `b`": the closest
/// valid name.
fn suggestion(message: &str) -> String {
    let Some(rest) = message
        .split_once("unknown field `")
        .or_else(|| message.split_once("unknown variant `"))
        .map(|(_, rest)| rest)
    else {
        return String::new();
    };
    let Some((wrong, expected)) = rest.split_once('`') else {
        return String::new();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(wrong, c), *c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 3))
        .min()
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// Checks what serde cannot: clients named by steps exist, durations
/// parse, each step says what it needs.
pub fn validate(scenario: &Scenario) -> Result<(), String> {
    for (name, client) in &scenario.clients {
        if !client.missing && client.token.is_none() && client.user.is_none() {
            return Err(format!(
                "client '{name}' needs a user (or token, or missing: true)"
            ));
        }
        if let Some(role) = &client.role
            && !matches!(role.as_str(), "user" | "admin" | "service")
        {
            return Err(format!(
                "client '{name}': role '{role}' is not user, admin or service"
            ));
        }
        duration("ttl", client.ttl.as_deref(), Duration::from_secs(3600))
            .map_err(|e| format!("client '{name}': {e}"))?;
    }
    let known = |name: &str, step: usize| {
        if scenario.clients.contains_key(name) {
            Ok(())
        } else {
            let closest = scenario
                .clients
                .keys()
                .map(|k| (strsim::levenshtein(name, k), k))
                .min()
                .filter(|(d, _)| *d <= 2)
                .map(|(_, k)| format!(" (did you mean '{k}'?)"))
                .unwrap_or_default();
            Err(format!(
                "step {}: no client named '{name}'{closest}",
                step + 1
            ))
        }
    };
    for (i, step) in scenario.steps.iter().enumerate() {
        let names: Vec<&str> = match step {
            Step::Connect(c) => c.names(),
            Step::Disconnect(c) => c.names(),
            Step::Expect(e) => e.names(),
            Step::ExpectNone(e) => e.names(),
            Step::ExpectClose(e) => vec![e.client.as_str()],
            Step::RefreshToken(r) => vec![r.client.as_str()],
            Step::Publish(p) => p.as_client.as_deref().into_iter().collect(),
            Step::Sleep(_) => Vec::new(),
        };
        if names.is_empty() && !matches!(step, Step::Publish(_) | Step::Sleep(_)) {
            return Err(format!("step {} ({}): name a client", i + 1, step.kind()));
        }
        for name in names {
            known(name, i)?;
        }
        let bad = |e: String| format!("step {} ({}): {e}", i + 1, step.kind());
        match step {
            Step::Expect(e) => {
                duration("within", e.within.as_deref(), Duration::ZERO).map_err(bad)?;
            }
            Step::ExpectNone(e) => {
                duration("for", e.duration.as_deref(), Duration::ZERO).map_err(bad)?;
            }
            Step::ExpectClose(e) => {
                duration("within", e.within.as_deref(), Duration::ZERO).map_err(bad)?;
            }
            Step::RefreshToken(r) => {
                duration("ttl", r.ttl.as_deref(), Duration::ZERO).map_err(bad)?;
            }
            Step::Sleep(d) => {
                duration("sleep", Some(d), Duration::ZERO).map_err(bad)?;
            }
            Step::Publish(p) => {
                let forms = [p.kind.is_some(), p.batch.is_some(), p.raw.is_some()];
                if forms.iter().filter(|f| **f).count() != 1 {
                    return Err(bad("give exactly one of type, batch or raw".to_owned()));
                }
            }
            Step::Connect(_) | Step::Disconnect(_) => {}
        }
    }
    Ok(())
}

/// The JSON Schema of a scenario document, for editors.
pub fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Scenario)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: org events
clients:
  alice: {user: 1, org: 7}
  bob: {user: "2", org: 7}
  stale: {user: 3, org: 7, expired: true}
steps:
  - connect: [alice, bob]
  - connect: {client: stale}
  - publish: {type: entity.created, org_id: 7, payload: {id: 1}}
  - expect: {clients: [alice, bob], type: "entity.*", payload: {id: 1}, within: 2s}
  - expect_none: {client: alice, type: chat.message, for: 100ms}
  - expect_close: {client: stale, code: 1008, reason: token expired}
  - disconnect: bob
  - sleep: 10ms
---
name: second
steps:
  - publish: {raw: "{", expect_status: 400}
"#;

    #[test]
    fn good_files_parse() {
        let scenarios = parse_str("good.yaml", GOOD).unwrap();
        assert_eq!(scenarios.len(), 2);
        assert_eq!(scenarios[0].steps.len(), 8);
        assert!(matches!(&scenarios[0].steps[3], Step::Expect(e) if e.names() == ["alice", "bob"]));
        assert_eq!(scenarios[0].clients["alice"].user, Some(Id::Int(1)));
    }

    #[test]
    fn errors_name_the_place_and_suggest() {
        let bad_step = "name: x\nclients: {a: {user: 1, org: 1}}\nsteps:\n  - conect: a\n";
        let e = parse_str("f.yaml", bad_step).unwrap_err();
        assert!(e.starts_with("f.yaml:4:"), "{e}");
        assert!(e.contains("did you mean `connect`?"), "{e}");

        let bad_field =
            "name: x\nclients: {a: {user: 1, org: 1}}\nsteps:\n  - expect: {client: a, tpye: x}\n";
        let e = parse_str("f.yaml", bad_field).unwrap_err();
        assert!(e.contains("did you mean `type`?"), "{e}");

        let unknown_client =
            "name: x\nclients: {alice: {user: 1, org: 1}}\nsteps:\n  - connect: alcie\n";
        let e = parse_str("f.yaml", unknown_client).unwrap_err();
        assert!(
            e.contains("step 1: no client named 'alcie' (did you mean 'alice'?)"),
            "{e}"
        );

        let bad_duration = "name: x\nclients: {a: {user: 1, org: 1}}\nsteps:\n  - sleep: soon\n";
        assert!(
            parse_str("f.yaml", bad_duration)
                .unwrap_err()
                .contains("step 1 (sleep)")
        );

        let syntax = "name: x\nsteps: [\n";
        assert!(
            parse_str("f.yaml", syntax)
                .unwrap_err()
                .starts_with("f.yaml:")
        );
        assert!(parse_str("f.yaml", "").is_err());
        let two_forms = "name: x\nsteps:\n  - publish: {type: a.b, raw: x}\n";
        assert!(
            parse_str("f.yaml", two_forms)
                .unwrap_err()
                .contains("exactly one")
        );
    }

    #[test]
    fn positions_count_from_one() {
        assert_eq!(count_from_one("steps[0]: bad"), "step 1: bad");
        assert_eq!(
            count_from_one("steps[1].publish.events[2]: x"),
            "step 2.publish.event 3: x"
        );
        assert_eq!(count_from_one("a[b] [7]"), "a[b]  #8");
    }

    #[test]
    fn schema_names_every_step() {
        let text = schema().to_string();
        for step in [
            "connect",
            "expect_none",
            "expect_close",
            "refresh_token",
            "sleep",
        ] {
            assert!(text.contains(step), "{step}");
        }
    }
}
