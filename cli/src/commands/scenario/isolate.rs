//! Each run of a scenario gets ids of its own, so that runs against a
//! shared server (a staging box, other runs beside it) never see each
//! other's events: every user and org id the scenario writes becomes
//! `<id>.<run>`, where `run` is new for every run. A scenario that sets
//! `pin_ids: true` keeps its ids as written.
//!
//! What is rewritten: the clients' `user` and `org`; `org_id` and
//! `user_id` of a publish and of each event of a batch; `orgs` and the
//! channels of `since` in a connect; `user` of a refresh; the `channel` a
//! step matches, and `user_id`, `org_id` and `channel` at the top of a
//! payload it matches (as `connected` and `resync.required` carry them).
//! A `raw` body is sent as written.

use serde_json::Value;

use super::format::{
    ClientSpec, ConnectOptions, ConnectStep, ExpectNoneStep, ExpectStep, Id, PublishStep,
    RefreshStep, Scenario, Step,
};

/// The rewriting of one run.
#[derive(Debug, Clone)]
pub struct Names {
    suffix: Option<String>,
}

impl Names {
    /// Ids of their own for this run, or as written for `pin_ids`.
    pub fn for_run(scenario: &Scenario, run: &str) -> Self {
        Self {
            suffix: (!scenario.pin_ids).then(|| run.to_owned()),
        }
    }

    /// Ids as written.
    #[cfg(test)]
    pub fn pinned() -> Self {
        Self { suffix: None }
    }

    /// One user or org id.
    pub fn id(&self, id: &str) -> String {
        match &self.suffix {
            Some(suffix) => format!("{id}.{suffix}"),
            None => id.to_owned(),
        }
    }

    fn id_of(&self, id: &Id) -> Id {
        Id::Str(self.id(&id.as_string()))
    }

    /// `org:7` → `org:7.<run>`; anything that is not a channel as is.
    pub fn channel(&self, channel: &str) -> String {
        match channel.split_once(':') {
            Some((kind @ ("org" | "user"), id)) => format!("{kind}:{}", self.id(id)),
            _ => channel.to_owned(),
        }
    }

    /// A `since` cursor: `org:7@40,user:1@3`, positions as written.
    fn cursor(&self, since: &str) -> String {
        since
            .split(',')
            .map(|part| match part.rsplit_once('@') {
                Some((channel, seq)) => format!("{}@{seq}", self.channel(channel.trim())),
                None => part.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `7,9` → each id; `*` stays.
    fn orgs(&self, orgs: &str) -> String {
        if orgs.trim() == "*" {
            return orgs.to_owned();
        }
        orgs.split(',')
            .map(|o| self.id(o.trim()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The id fields at the top of a payload or an event body.
    fn fields(&self, value: &Value) -> Value {
        let mut value = value.clone();
        if let Value::Object(map) = &mut value {
            for key in ["user_id", "org_id"] {
                let renamed = match map.get(key) {
                    Some(Value::String(s)) => Some(self.id(s)),
                    Some(Value::Number(n)) => Some(self.id(&n.to_string())),
                    _ => None,
                };
                if let Some(renamed) = renamed {
                    map.insert(key.to_owned(), Value::String(renamed));
                }
            }
            if let Some(Value::String(channel)) = map.get_mut("channel") {
                *channel = self.channel(channel);
            }
        }
        value
    }

    /// The scenario as this run sends and expects it.
    pub fn scenario(&self, scenario: &Scenario) -> Scenario {
        if self.suffix.is_none() {
            return scenario.clone();
        }
        let mut out = scenario.clone();
        for spec in out.clients.values_mut() {
            self.client(spec);
        }
        for step in &mut out.steps {
            self.step(step);
        }
        out
    }

    fn client(&self, spec: &mut ClientSpec) {
        spec.user = spec.user.as_ref().map(|u| self.id_of(u));
        spec.org = spec.org.as_ref().map(|o| self.id_of(o));
    }

    fn step(&self, step: &mut Step) {
        match step {
            Step::Connect(ConnectStep::Detailed(ConnectOptions { since, orgs, .. })) => {
                *since = since.as_deref().map(|s| self.cursor(s));
                *orgs = orgs.as_deref().map(|o| self.orgs(o));
            }
            Step::Publish(p) => self.publish(p),
            Step::Expect(ExpectStep {
                channel, payload, ..
            })
            | Step::ExpectNone(ExpectNoneStep {
                channel, payload, ..
            }) => {
                *channel = channel.as_deref().map(|c| self.channel(c));
                *payload = payload.as_ref().map(|p| self.fields(p));
            }
            Step::RefreshToken(RefreshStep { user, .. }) => {
                *user = user.as_ref().map(|u| self.id_of(u));
            }
            Step::Connect(ConnectStep::Plain(_))
            | Step::Disconnect(_)
            | Step::ExpectClose(_)
            | Step::Sleep(_) => {}
        }
    }

    fn publish(&self, p: &mut PublishStep) {
        p.org_id = p.org_id.as_ref().map(|o| self.id_of(o));
        p.user_id = p.user_id.as_ref().map(|u| self.id_of(u));
        if let Some(batch) = &mut p.batch {
            for event in batch.iter_mut() {
                *event = self.fields(event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_of_a_scenario_is_the_runs_own() {
        let scenario = &super::super::parse_str(
            "t.yaml",
            r#"
name: x
clients:
  alice: {user: 1, org: 7}
steps:
  - connect: {client: alice, since: "org:7@40,user:1@2", orgs: "7,9"}
  - publish: {type: entity.created, org_id: 7}
  - publish: {batch: [{type: share.created, user_id: 1}]}
  - expect: {client: alice, channel: "org:7", payload: {org_id: "7", channel: "org:7", id: 1}}
  - refresh_token: {client: alice, user: 2}
"#,
        )
        .unwrap()[0];
        let run = Names::for_run(scenario, "r1").scenario(scenario);
        let text = format!("{run:?}");
        for written in ["Int(1)", "Int(7)", "\"org:7\"", "\"org:7@40"] {
            assert!(!text.contains(written), "{written} left in {text}");
        }
        assert!(text.contains("org:7.r1@40,user:1.r1@2"), "{text}");
        assert!(text.contains("\"7.r1,9.r1\""), "{text}");
        assert!(
            text.contains("Number(1)"),
            "a payload's own fields stay: {text}"
        );
        assert_eq!(Names::pinned().channel("org:7"), "org:7");
    }
}
