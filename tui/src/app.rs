//! The dashboard's state and how each [`Action`] changes it. No I/O and no
//! terminal here, so all of it is tested as plain Rust.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use hrrt_protocol::api::{NodeInfo, Stats};
use hrrt_protocol::{Event, Resync, ServerFrame};
use serde_json::Value;

/// Events kept for the stream pane; older ones are dropped, so a flood
/// cannot grow memory.
pub const MAX_EVENTS: usize = 2000;
/// Seconds of event-rate history in the sparkline.
pub const RATE_SECONDS: usize = 60;
/// Seconds over which an org's events/s is averaged.
const ORG_RATE_WINDOW: usize = 10;

/// What the feed (run by `hrrt dash`) reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Feed {
    Status(ServerStatus),
    /// One event as received.
    Event(Event),
    /// A `resync.required` frame: history could not cover a gap.
    Resync(Resync),
    Stats(StatsSnapshot),
    /// `GET /api/nodes`: the live nodes of the cluster.
    Nodes(Vec<NodeSnapshot>),
    /// The feed cannot go on (the server refused the token): the
    /// dashboard ends and `hrrt dash` prints this.
    Stop(String),
}

/// One node as `GET /api/nodes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeSnapshot {
    pub node_id: String,
    pub connections: u64,
    pub users: u64,
    pub last_seen: String,
    pub delivered_total: u64,
}

impl From<&NodeInfo> for NodeSnapshot {
    fn from(n: &NodeInfo) -> Self {
        Self {
            node_id: n.node_id.clone(),
            connections: n.connections as u64,
            users: n.users as u64,
            last_seen: n.last_seen.clone(),
            delivered_total: n.delivered_total,
        }
    }
}

/// A node of the nodes pane: what it last said, and whether it is gone.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub node: NodeSnapshot,
    /// Deliveries per second, from its last two entries.
    pub rate: f64,
    /// No longer listed: silent for three heartbeats.
    pub gone: bool,
    seen_at: Instant,
}

/// The connection to the server, as the header shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStatus {
    Connecting,
    Connected,
    /// Lost; the feed is reconnecting (and will resume).
    Disconnected(String),
}

/// The parts of `GET /api/stats` the dashboard shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    pub node_id: String,
    pub engine: String,
    pub uptime_seconds: u64,
    pub connections: u64,
    pub users: u64,
    pub by_org: BTreeMap<String, u64>,
    pub published_total: u64,
    pub delivered_total: u64,
    pub slow_consumer_closes: u64,
}

impl From<&Stats> for StatsSnapshot {
    fn from(s: &Stats) -> Self {
        Self {
            node_id: s.node_id.clone(),
            engine: s.engine.clone(),
            uptime_seconds: s.uptime_seconds,
            connections: s.connections.total as u64,
            users: s.users as u64,
            by_org: s
                .connections
                .by_org
                .iter()
                .map(|(org, n)| (org.clone(), *n as u64))
                .collect(),
            published_total: s.events.published_total,
            delivered_total: s.events.delivered_total,
            slow_consumer_closes: s.slow_consumer_closes,
        }
    }
}

/// A key, independent of the terminal library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Tab,
    BackTab,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Backspace,
    CtrlC,
}

/// Everything that changes the state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Feed(Feed),
    Key(Key),
    /// Time passes (the frame tick).
    Tick(Instant),
}

/// Which pane the arrow keys move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Orgs,
    Stream,
}

/// What the keyboard is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing a filter; Enter applies, Esc cancels.
    Filter(String),
    /// Showing one event as pretty JSON.
    Detail(Box<StreamEvent>),
    Help,
}

/// How the orgs table is sorted (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Connections,
    Rate,
    Org,
    LastEvent,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            Self::Connections => Self::Rate,
            Self::Rate => Self::Org,
            Self::Org => Self::LastEvent,
            Self::LastEvent => Self::Connections,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Rate => "events/s",
            Self::Org => "org",
            Self::LastEvent => "last event",
        }
    }
}

/// One event as the stream pane shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// `HH:MM:SS.mmm` (UTC) from the envelope's timestamp.
    pub time: String,
    pub kind: String,
    pub channel: String,
    pub seq: u64,
    /// The payload on one line, shortened.
    pub summary: String,
    /// The whole envelope, for the detail view.
    pub raw: String,
}

impl StreamEvent {
    fn from_event(event: &Event) -> Self {
        const SUMMARY: usize = 160;
        let mut summary = event.payload_value().to_string();
        if summary.len() > SUMMARY {
            let mut end = SUMMARY;
            while !summary.is_char_boundary(end) {
                end -= 1;
            }
            summary.truncate(end);
            summary.push('…');
        }
        // The whole envelope, pretty, as the detail view shows it.
        let envelope = ServerFrame::Event(event.clone()).encode();
        let raw = serde_json::from_str::<Value>(&envelope)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or(envelope);
        Self {
            // `2026-01-01T12:00:00.123456Z` → `12:00:00.123`
            time: event.timestamp.get(11..23).unwrap_or("").to_owned(),
            kind: event.event_type.to_string(),
            channel: event.channel.to_string(),
            seq: event.seq,
            summary,
            raw,
        }
    }

    /// The org of an `org:<id>` channel.
    pub fn org(&self) -> Option<&str> {
        self.channel.strip_prefix("org:")
    }
}

/// Events per second over the last few seconds, in one-second buckets.
#[derive(Debug, Clone, Default)]
pub struct RateWindow {
    buckets: VecDeque<u64>,
    current: u64,
}

impl RateWindow {
    fn record(&mut self) {
        self.current += 1;
    }

    /// Closes the current second.
    fn roll(&mut self, keep: usize) {
        self.buckets.push_back(self.current);
        self.current = 0;
        while self.buckets.len() > keep {
            self.buckets.pop_front();
        }
    }

    /// The average of the closed seconds.
    pub fn per_second(&self) -> f64 {
        if self.buckets.is_empty() {
            return 0.0;
        }
        self.buckets.iter().sum::<u64>() as f64 / self.buckets.len() as f64
    }

    pub fn history(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets.iter().copied()
    }
}

/// What the dashboard knows about one org.
#[derive(Debug, Clone, Default)]
pub struct OrgRow {
    pub org: String,
    pub connections: u64,
    pub events: u64,
    pub rate: RateWindow,
    /// `HH:MM:SS.mmm` of its latest event.
    pub last_event: Option<String>,
}

/// The whole dashboard state.
#[derive(Debug)]
pub struct App {
    /// The server's URL, for the header.
    pub url: String,
    pub status: ServerStatus,
    pub stats: Option<StatsSnapshot>,
    /// The cluster's nodes (one, or none yet, for a single node).
    pub nodes: BTreeMap<String, NodeRow>,
    /// Published and delivered per second, from successive stats.
    pub published_rate: f64,
    pub delivered_rate: f64,
    last_stats: Option<(Instant, StatsSnapshot)>,
    /// Newest last.
    pub events: VecDeque<StreamEvent>,
    /// Events that arrived while paused; shown on resume.
    pending: VecDeque<StreamEvent>,
    pub paused: bool,
    pub filter: Option<String>,
    pub org_focus: Option<String>,
    pub focus: Focus,
    pub mode: Mode,
    pub sort: SortBy,
    /// Selected row of the stream, counted from the newest (0) back.
    pub stream_selected: usize,
    pub org_selected: usize,
    pub type_counts: BTreeMap<String, u64>,
    pub orgs: BTreeMap<String, OrgRow>,
    /// Every event seen, per second, for the sparkline.
    pub rate: RateWindow,
    pub total_events: u64,
    pub resyncs: u64,
    second_started: Option<Instant>,
    pub should_quit: bool,
    /// Why the feed stopped the dashboard, if it did.
    pub stopped: Option<String>,
    /// `hrrt dash --org`: the one org every pane shows.
    pub only_org: Option<String>,
}

impl App {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            status: ServerStatus::Connecting,
            stats: None,
            nodes: BTreeMap::new(),
            published_rate: 0.0,
            delivered_rate: 0.0,
            last_stats: None,
            events: VecDeque::new(),
            pending: VecDeque::new(),
            paused: false,
            filter: None,
            org_focus: None,
            focus: Focus::Stream,
            mode: Mode::Normal,
            sort: SortBy::Connections,
            stream_selected: 0,
            org_selected: 0,
            type_counts: BTreeMap::new(),
            orgs: BTreeMap::new(),
            rate: RateWindow::default(),
            total_events: 0,
            resyncs: 0,
            second_started: None,
            should_quit: false,
            stopped: None,
            only_org: None,
        }
    }

    /// A dashboard of one org: the orgs pane and the header count it alone.
    #[must_use]
    pub fn with_org(mut self, org: Option<String>) -> Self {
        self.only_org = org;
        self
    }

    /// Whether this is a cluster (a nodes pane): several nodes listed by a
    /// shared engine. A memory node is alone; after a restart the one it
    /// replaced is not a node that left.
    pub fn is_cluster(&self) -> bool {
        self.nodes.len() > 1 && self.stats.as_ref().is_none_or(|s| s.engine != "memory")
    }

    pub fn update(&mut self, action: Action) {
        match action {
            Action::Feed(feed) => self.on_feed(feed),
            Action::Key(key) => self.on_key(key),
            Action::Tick(now) => self.on_tick(now),
        }
    }

    fn on_feed(&mut self, feed: Feed) {
        match feed {
            Feed::Status(status) => self.status = status,
            Feed::Resync(_) => self.resyncs += 1,
            Feed::Stats(stats) => self.on_stats(stats, Instant::now()),
            Feed::Nodes(nodes) => self.on_nodes(nodes, Instant::now()),
            Feed::Stop(why) => {
                self.status = ServerStatus::Disconnected(why.clone());
                self.stopped = Some(why);
                self.should_quit = true;
            }
            Feed::Event(envelope) => {
                let event = StreamEvent::from_event(&envelope);
                self.total_events += 1;
                self.rate.record();
                *self.type_counts.entry(event.kind.clone()).or_default() += 1;
                if let Some(org) = event.org() {
                    let row = self.orgs.entry(org.to_owned()).or_insert_with(|| OrgRow {
                        org: org.to_owned(),
                        ..OrgRow::default()
                    });
                    row.events += 1;
                    row.rate.record();
                    row.last_event = Some(event.time.clone());
                }
                if self.paused {
                    push_bounded(&mut self.pending, event);
                } else {
                    push_bounded(&mut self.events, event);
                    // Keep the selection on the same event as new ones arrive.
                    if self.stream_selected > 0 {
                        self.stream_selected += 1;
                    }
                }
            }
        }
    }

    /// Takes a stats snapshot; rates come from the difference with the last.
    /// A fresh node list: rates from the previous entries; a node no
    /// longer listed is kept, marked gone, so ops see it left.
    pub fn on_nodes(&mut self, nodes: Vec<NodeSnapshot>, now: Instant) {
        for row in self.nodes.values_mut() {
            row.gone = !nodes.iter().any(|n| n.node_id == row.node.node_id);
        }
        for node in nodes {
            match self.nodes.get_mut(&node.node_id) {
                Some(row) => {
                    let secs = now.duration_since(row.seen_at).as_secs_f64();
                    if secs > 0.0 {
                        row.rate = node
                            .delivered_total
                            .saturating_sub(row.node.delivered_total)
                            as f64
                            / secs;
                    }
                    row.node = node;
                    row.seen_at = now;
                }
                None => {
                    self.nodes.insert(
                        node.node_id.clone(),
                        NodeRow {
                            node,
                            rate: 0.0,
                            gone: false,
                            seen_at: now,
                        },
                    );
                }
            }
        }
    }

    /// Connections over the live nodes of a cluster (None for one node).
    pub fn cluster_connections(&self) -> Option<u64> {
        self.is_cluster().then(|| {
            self.nodes
                .values()
                .filter(|r| !r.gone)
                .map(|r| r.node.connections)
                .sum()
        })
    }

    pub fn on_stats(&mut self, stats: StatsSnapshot, now: Instant) {
        if let Some((at, last)) = &self.last_stats {
            let secs = now.duration_since(*at).as_secs_f64();
            if secs > 0.0 {
                let delta = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
                self.published_rate = delta(stats.published_total, last.published_total);
                self.delivered_rate = delta(stats.delivered_total, last.delivered_total);
            }
        }
        let mut stats = stats;
        if let Some(only) = &self.only_org {
            stats.by_org.retain(|org, _| org == only);
            stats.connections = stats.by_org.values().sum();
        }
        for (org, connections) in &stats.by_org {
            self.orgs
                .entry(org.clone())
                .or_insert_with(|| OrgRow {
                    org: org.clone(),
                    ..OrgRow::default()
                })
                .connections = *connections;
        }
        for row in self.orgs.values_mut() {
            if !stats.by_org.contains_key(&row.org) {
                row.connections = 0;
            }
        }
        self.last_stats = Some((now, stats.clone()));
        self.stats = Some(stats);
    }

    fn on_tick(&mut self, now: Instant) {
        let Some(started) = self.second_started else {
            self.second_started = Some(now);
            return;
        };
        // Close every whole second that passed (several after a stall).
        let mut started = started;
        let mut rolled = 0;
        while now.duration_since(started) >= Duration::from_secs(1) && rolled < RATE_SECONDS {
            started += Duration::from_secs(1);
            rolled += 1;
            self.rate.roll(RATE_SECONDS);
            for row in self.orgs.values_mut() {
                row.rate.roll(ORG_RATE_WINDOW);
            }
        }
        if rolled == RATE_SECONDS {
            started = now;
        }
        self.second_started = Some(started);
    }

    fn on_key(&mut self, key: Key) {
        if key == Key::CtrlC {
            self.should_quit = true;
            return;
        }
        match &mut self.mode {
            Mode::Filter(input) => match key {
                Key::Enter => {
                    let text = input.trim().to_owned();
                    self.filter = (!text.is_empty()).then_some(text);
                    self.stream_selected = 0;
                    self.mode = Mode::Normal;
                }
                Key::Esc => self.mode = Mode::Normal,
                Key::Backspace => {
                    input.pop();
                }
                Key::Char(c) => input.push(c),
                _ => {}
            },
            Mode::Detail(_) | Mode::Help => {
                if matches!(key, Key::Esc | Key::Enter | Key::Char('q' | '?')) {
                    self.mode = Mode::Normal;
                }
            }
            Mode::Normal => self.on_normal_key(key),
        }
    }

    fn on_normal_key(&mut self, key: Key) {
        match key {
            Key::Char('q') => self.should_quit = true,
            Key::Char(' ') => {
                self.paused = !self.paused;
                if !self.paused {
                    while let Some(event) = self.pending.pop_front() {
                        push_bounded(&mut self.events, event);
                    }
                }
            }
            Key::Char('/') => {
                self.mode = Mode::Filter(self.filter.clone().unwrap_or_default());
            }
            Key::Esc => {
                self.filter = None;
                self.org_focus = None;
            }
            Key::Tab | Key::BackTab => {
                self.focus = match self.focus {
                    Focus::Orgs => Focus::Stream,
                    Focus::Stream => Focus::Orgs,
                };
            }
            Key::Down | Key::Char('j') => self.move_selection(-1),
            Key::Up | Key::Char('k') => self.move_selection(1),
            Key::PageDown => self.move_selection(-10),
            Key::PageUp => self.move_selection(10),
            Key::Home => self.move_selection(isize::MAX / 2),
            Key::End => self.move_selection(-(isize::MAX / 2)),
            Key::Enter => {
                if let Some(event) = self.selected_event() {
                    self.mode = Mode::Detail(Box::new(event.clone()));
                }
            }
            Key::Char('o') => {
                let selected = self
                    .org_rows()
                    .get(self.org_selected)
                    .map(|r| r.org.clone());
                self.org_focus = match (selected, &self.org_focus) {
                    (Some(org), Some(current)) if org == *current => None,
                    (selected, _) => selected,
                };
                self.stream_selected = 0;
            }
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('c') => {
                self.events.clear();
                self.pending.clear();
                self.type_counts.clear();
                self.total_events = 0;
                self.resyncs = 0;
                for row in self.orgs.values_mut() {
                    row.events = 0;
                    row.last_event = None;
                }
                self.stream_selected = 0;
            }
            Key::Char('?') => self.mode = Mode::Help,
            _ => {}
        }
    }

    /// Moves the selection of the focused pane; positive is up (older in
    /// the stream, earlier in the table).
    fn move_selection(&mut self, by: isize) {
        match self.focus {
            Focus::Stream => {
                let len = self.visible_events().len();
                self.stream_selected = step(self.stream_selected, by, len);
            }
            Focus::Orgs => {
                let len = self.org_rows().len();
                self.org_selected = step(self.org_selected, -by, len);
            }
        }
    }

    /// The events the stream pane shows (filter and org focus applied),
    /// newest first.
    pub fn visible_events(&self) -> Vec<&StreamEvent> {
        self.events
            .iter()
            .rev()
            .filter(|e| {
                self.org_focus
                    .as_deref()
                    .is_none_or(|org| e.org() == Some(org))
            })
            .filter(|e| self.filter.as_deref().is_none_or(|f| matches_filter(f, e)))
            .collect()
    }

    pub fn selected_event(&self) -> Option<&StreamEvent> {
        self.visible_events().get(self.stream_selected).copied()
    }

    /// The orgs table's rows, sorted.
    pub fn org_rows(&self) -> Vec<&OrgRow> {
        let mut rows: Vec<&OrgRow> = self.orgs.values().collect();
        match self.sort {
            SortBy::Connections => {
                rows.sort_by(|a, b| b.connections.cmp(&a.connections).then(a.org.cmp(&b.org)))
            }
            SortBy::Rate => rows.sort_by(|a, b| {
                b.rate
                    .per_second()
                    .total_cmp(&a.rate.per_second())
                    .then(a.org.cmp(&b.org))
            }),
            SortBy::Org => rows.sort_by(|a, b| a.org.cmp(&b.org)),
            SortBy::LastEvent => {
                rows.sort_by(|a, b| b.last_event.cmp(&a.last_event).then(a.org.cmp(&b.org)))
            }
        }
        rows
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

fn push_bounded(events: &mut VecDeque<StreamEvent>, event: StreamEvent) {
    if events.len() >= MAX_EVENTS {
        events.pop_front();
    }
    events.push_back(event);
}

fn step(current: usize, by: isize, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let next = current as isize + by;
    next.clamp(0, len as isize - 1) as usize
}

/// A filter with `*` or `?` is a glob on the type; otherwise it matches
/// text anywhere in the type, channel or payload.
pub fn matches_filter(filter: &str, event: &StreamEvent) -> bool {
    if filter.contains(['*', '?']) {
        glob_matches(filter, &event.kind)
    } else {
        event.kind.contains(filter)
            || event.channel.contains(filter)
            || event.summary.contains(filter)
    }
}

/// Whether `text` matches `pattern`, where `*` is any run of characters
/// and `?` any one (`entity.*`). The one glob of the toolkit: `hrrt listen
/// --type`, scenario matchers and the dashboard's filter all use it.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    // Iterative with one backtrack point: linear in practice, no recursion.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// An event frame written as JSON, as the feed would hand it over.
#[cfg(test)]
pub(crate) fn envelope(v: &Value) -> Feed {
    match ServerFrame::decode(&v.to_string()) {
        Ok(ServerFrame::Event(e)) => Feed::Event(e),
        other => panic!("not an event: {other:?}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;

    fn event(kind: &str, channel: &str, seq: u64) -> Action {
        Action::Feed(envelope(&json!({
            "type": kind, "channel": channel, "seq": seq,
            "timestamp": "2026-01-01T12:00:00.123456Z", "payload": {"id": seq},
        })))
    }

    #[test]
    fn events_are_counted_per_type_and_org() {
        let mut app = App::new("http://x");
        app.update(event("entity.created", "org:7", 1));
        app.update(event("entity.created", "org:7", 2));
        app.update(event("share.created", "user:1", 1));
        assert_eq!(app.type_counts["entity.created"], 2);
        assert_eq!(app.orgs["7"].events, 2);
        assert_eq!(app.orgs["7"].last_event.as_deref(), Some("12:00:00.123"));
        assert_eq!(app.visible_events()[0].kind, "share.created");
        assert_eq!(app.total_events, 3);
    }

    #[test]
    fn pause_freezes_the_stream_but_keeps_counting() {
        let mut app = App::new("x");
        app.update(event("entity.created", "org:7", 1));
        app.update(Action::Key(Key::Char(' ')));
        app.update(event("entity.updated", "org:7", 2));
        assert!(app.paused);
        assert_eq!(app.visible_events().len(), 1);
        assert_eq!(app.type_counts["entity.updated"], 1);
        assert_eq!(app.pending(), 1);
        app.update(Action::Key(Key::Char(' ')));
        assert_eq!(app.visible_events().len(), 2);
    }

    #[test]
    fn filter_and_org_focus() {
        let mut app = App::new("x");
        app.update(event("entity.created", "org:7", 1));
        app.update(event("chat.message", "org:7", 2));
        app.update(event("entity.deleted", "org:8", 1));
        for c in "/entity.*".chars() {
            app.update(Action::Key(if c == '/' {
                Key::Char('/')
            } else {
                Key::Char(c)
            }));
        }
        app.update(Action::Key(Key::Enter));
        assert_eq!(app.filter.as_deref(), Some("entity.*"));
        assert_eq!(app.visible_events().len(), 2);
        // Focus org 7: select it in the (org-sorted) table, press o.
        app.update(Action::Key(Key::Char('s')));
        app.update(Action::Key(Key::Char('s')));
        assert_eq!(app.sort, SortBy::Org);
        app.update(Action::Key(Key::Char('o')));
        assert_eq!(app.org_focus.as_deref(), Some("7"));
        assert_eq!(app.visible_events().len(), 1);
        app.update(Action::Key(Key::Esc));
        assert_eq!((app.filter.as_ref(), app.org_focus.as_ref()), (None, None));
        assert!(
            matches_filter("id", &app.events[0]),
            "text filters look into the payload"
        );
    }

    #[test]
    fn selection_detail_and_quit() {
        let mut app = App::new("x");
        for seq in 1..=3 {
            app.update(event("entity.created", "org:7", seq));
        }
        app.update(Action::Key(Key::Char('k')));
        app.update(Action::Key(Key::Enter));
        match &app.mode {
            Mode::Detail(e) => {
                assert_eq!(e.seq, 2);
                assert!(e.raw.contains("\"seq\": 2"));
            }
            other => panic!("{other:?}"),
        }
        // A new event keeps the same event selected.
        app.update(Action::Key(Key::Esc));
        app.update(event("entity.created", "org:7", 4));
        assert_eq!(app.selected_event().map(|e| e.seq), Some(2));
        app.update(Action::Key(Key::Char('c')));
        assert!(app.events.is_empty() && app.type_counts.is_empty());
        app.update(Action::Key(Key::Char('?')));
        assert_eq!(app.mode, Mode::Help);
        app.update(Action::Key(Key::Char('?')));
        app.update(Action::Key(Key::Char('q')));
        assert!(app.should_quit);
    }

    #[test]
    fn the_stream_is_bounded() {
        let mut app = App::new("x");
        for seq in 0..(MAX_EVENTS as u64 + 500) {
            app.update(event("entity.created", "org:7", seq));
        }
        assert_eq!(app.events.len(), MAX_EVENTS);
        assert_eq!(app.total_events, MAX_EVENTS as u64 + 500);
    }

    #[test]
    fn rates_roll_each_second() {
        let mut app = App::new("x");
        let t0 = Instant::now();
        app.update(Action::Tick(t0));
        for seq in 0..5 {
            app.update(event("entity.created", "org:7", seq));
        }
        app.update(Action::Tick(t0 + Duration::from_millis(1000)));
        app.update(Action::Tick(t0 + Duration::from_millis(2000)));
        assert_eq!(app.rate.history().collect::<Vec<_>>(), [5, 0]);
        assert_eq!(app.orgs["7"].rate.per_second(), 2.5);

        let stats = |p, d| StatsSnapshot {
            published_total: p,
            delivered_total: d,
            by_org: [("7".to_owned(), 3)].into(),
            ..StatsSnapshot::default()
        };
        app.on_stats(stats(10, 100), t0);
        app.on_stats(stats(30, 300), t0 + Duration::from_secs(2));
        assert_eq!((app.published_rate, app.delivered_rate), (10.0, 100.0));
        assert_eq!(app.orgs["7"].connections, 3);
    }

    /// A node's stats as the server answers them, for tests.
    pub(crate) fn stats_of(engine: &str, by_org: &[(&str, usize)], users: usize) -> Stats {
        Stats {
            node_id: "ab12".into(),
            engine: engine.into(),
            epoch: "e".into(),
            uptime_seconds: 75,
            connections: hrrt_protocol::api::Connections {
                total: by_org.iter().map(|(_, n)| n).sum(),
                by_org: by_org.iter().map(|(o, n)| ((*o).to_owned(), *n)).collect(),
                watchers: 0,
            },
            users,
            events: hrrt_protocol::api::Events {
                published_total: 4,
                delivered_total: 9,
                ..Default::default()
            },
            slow_consumer_closes: 1,
            closes: BTreeMap::new(),
            history_events: 0,
            settings: hrrt_protocol::api::Settings::default(),
        }
    }

    #[test]
    fn stats_are_read() {
        let s = StatsSnapshot::from(&stats_of("memory", &[("7", 2), ("8", 1)], 2));
        assert_eq!((s.connections, s.by_org["7"], s.delivered_total), (3, 2, 9));
    }
}
