//! Drawing: `impl Widget for &App`, one function per region.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, List, ListItem, ListState, Paragraph, Row, Sparkline,
    StatefulWidget, Table, TableState, Widget, Wrap,
};

use crate::app::{App, Focus, Mode, ServerStatus};
use crate::theme;

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let [header, body, footer] = Layout::vertical([
            Constraint::Length(3),
            Constraint::Min(6),
            Constraint::Length(1),
        ])
        .areas(area);
        let [left, stream] =
            Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)])
                .areas(body);
        // A cluster adds a nodes pane above the orgs.
        let cluster = self.is_cluster();
        let node_rows = u16::try_from(self.nodes.len()).unwrap_or(u16::MAX);
        let [nodes, orgs, types] = Layout::vertical([
            Constraint::Length(if cluster {
                node_rows.saturating_add(3)
            } else {
                0
            }),
            Constraint::Percentage(55),
            Constraint::Percentage(45),
        ])
        .areas(left);
        render_header(self, header, buf);
        if cluster {
            render_nodes(self, nodes, buf);
        }
        render_orgs(self, orgs, buf);
        render_types(self, types, buf);
        render_stream(self, stream, buf);
        render_footer(self, footer, buf);
        match &self.mode {
            Mode::Detail(event) => render_popup("event", Text::raw(event.raw.as_str()), area, buf),
            Mode::Help => render_popup("keys", help_text(), area, buf),
            Mode::Normal | Mode::Filter(_) => {}
        }
    }
}

fn block(title: &str, focused: bool) -> Block<'_> {
    Block::bordered()
        .title(Span::styled(format!(" {title} "), theme::TITLE))
        .border_style(if focused {
            theme::BORDER_FOCUSED
        } else {
            theme::BORDER
        })
}

fn render_header(app: &App, area: Rect, buf: &mut Buffer) {
    let status = match &app.status {
        ServerStatus::Connecting => Span::styled("connecting…", theme::WARN),
        ServerStatus::Connected => Span::styled("● live", theme::GOOD),
        ServerStatus::Disconnected(why) => {
            Span::styled(format!("✖ disconnected ({why}), reconnecting"), theme::BAD)
        }
    };
    let label = |text: &'static str| Span::styled(text, theme::LABEL);
    let value = |text: String| Span::styled(text, theme::VALUE);
    let mut first = vec![
        Span::styled("hrrt dash ", theme::TITLE),
        Span::raw(app.url.clone()),
        Span::raw("  "),
        status,
    ];
    if app.paused {
        first.push(Span::styled("  ⏸ paused", theme::WARN));
    }
    let second = match &app.stats {
        Some(s) => Line::from(vec![
            label("engine "),
            value(s.engine.clone()),
            label("  node "),
            value(s.node_id.clone()),
            label("  up "),
            value(uptime(s.uptime_seconds)),
            label("  connections "),
            value(match app.cluster_connections() {
                Some(total) => format!("{} (cluster {total})", s.connections),
                None => s.connections.to_string(),
            }),
            label(if app.only_org.is_some() {
                "  (this org)"
            } else {
                "  users "
            }),
            value(if app.only_org.is_some() {
                String::new()
            } else {
                s.users.to_string()
            }),
            label("  events/s in "),
            value(format!("{:.0}", app.published_rate)),
            label("  delivered/s "),
            value(format!("{:.0}", app.delivered_rate)),
            label("  slow consumers "),
            value(s.slow_consumer_closes.to_string()),
        ]),
        None => Line::from(label("waiting for /api/stats…")),
    };
    Paragraph::new(vec![Line::from(first), second])
        .block(
            Block::default()
                .borders(Borders::BOTTOM)
                .border_style(theme::BORDER),
        )
        .render(area, buf);
}

fn render_nodes(app: &App, area: Rect, buf: &mut Buffer) {
    let rows: Vec<Row> = app
        .nodes
        .values()
        .map(|row| {
            let (status, style) = if row.gone {
                ("gone", theme::BAD)
            } else {
                ("live", theme::GOOD)
            };
            // RFC 3339 down to the second: the time of day is what matters.
            let seen = row
                .node
                .last_seen
                .get(11..19)
                .unwrap_or(&row.node.last_seen);
            Row::new(vec![
                Cell::from(row.node.node_id.clone()),
                Cell::from(row.node.connections.to_string()),
                Cell::from(format!("{:.0}", row.rate)),
                Cell::from(seen.to_owned()),
                Cell::from(Span::styled(status, style)),
            ])
        })
        .collect();
    let total = app.nodes.values().filter(|r| !r.gone).count();
    let title = format!("nodes ({total} live)");
    let table = Table::new(
        rows,
        [
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(5),
        ],
    )
    .header(Row::new(["node", "conns", "events/s", "heartbeat", ""]).style(theme::LABEL))
    .block(block(&title, false));
    Widget::render(table, area, buf);
}

fn uptime(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else {
        format!("{m}m{s:02}s")
    }
}

fn render_orgs(app: &App, area: Rect, buf: &mut Buffer) {
    let rows: Vec<Row> = app
        .org_rows()
        .into_iter()
        .map(|row| {
            let focused = app.org_focus.as_deref() == Some(row.org.as_str());
            let org = if focused {
                format!("▶ {}", row.org)
            } else {
                row.org.clone()
            };
            Row::new(vec![
                Cell::from(org),
                Cell::from(row.connections.to_string()),
                Cell::from(format!("{:.1}", row.rate.per_second())),
                Cell::from(row.events.to_string()),
                Cell::from(row.last_event.clone().unwrap_or_else(|| "–".to_owned())),
            ])
        })
        .collect();
    let header = Row::new(vec!["org", "conns", "ev/s", "events", "last event"]).style(theme::LABEL);
    let title = format!("orgs (by {}, s sorts)", app.sort.label());
    let table = Table::new(
        rows,
        [
            Constraint::Min(8),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(12),
        ],
    )
    .header(header)
    .block(block(&title, app.focus == Focus::Orgs))
    .row_highlight_style(if app.focus == Focus::Orgs {
        theme::SELECTED
    } else {
        Style::new()
    });
    let mut state = TableState::default().with_selected(Some(app.org_selected));
    StatefulWidget::render(table, area, buf, &mut state);
}

fn render_types(app: &App, area: Rect, buf: &mut Buffer) {
    let outer = block("types and rate (60 s)", false);
    let inner = outer.inner(area);
    outer.render(area, buf);
    let [spark, list] = Layout::vertical([Constraint::Length(3), Constraint::Min(1)]).areas(inner);
    let history: Vec<u64> = app.rate.history().collect();
    let now = history.last().copied().unwrap_or(0);
    let max = history.iter().copied().max().unwrap_or(0);
    Paragraph::new(Line::from(vec![
        Span::styled(format!("{now}/s"), theme::VALUE),
        Span::styled(
            format!(" now, peak {max}/s, {} total", app.total_events),
            theme::LABEL,
        ),
    ]))
    .render(Rect { height: 1, ..spark }, buf);
    Sparkline::default()
        .data(&history)
        .style(theme::SPARKLINE)
        .render(
            Rect {
                y: spark.y + 1,
                height: spark.height.saturating_sub(1),
                ..spark
            },
            buf,
        );
    let mut counts: Vec<(&String, &u64)> = app.type_counts.iter().collect();
    counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let lines: Vec<Line> = counts
        .into_iter()
        .map(|(kind, n)| {
            Line::from(vec![
                Span::styled(format!("{kind:<24}"), theme::event_type(kind)),
                Span::styled(format!("{n:>8}"), theme::VALUE),
            ])
        })
        .collect();
    let mut lines = lines;
    if app.resyncs > 0 {
        lines.push(Line::styled(
            format!("resync.required × {}", app.resyncs),
            theme::WARN,
        ));
    }
    Paragraph::new(lines).render(list, buf);
}

fn render_stream(app: &App, area: Rect, buf: &mut Buffer) {
    let events = app.visible_events();
    let mut title = format!("stream ({} shown", events.len());
    if let Some(filter) = &app.filter {
        title.push_str(&format!(", filter '{filter}'"));
    }
    if let Some(org) = &app.org_focus {
        title.push_str(&format!(", org {org}"));
    }
    if app.paused {
        title.push_str(&format!(", paused: {} waiting", app.pending()));
    }
    title.push(')');
    let items: Vec<ListItem> = events
        .iter()
        .map(|e| {
            ListItem::new(Line::from(vec![
                Span::styled(format!("{} ", e.time), theme::DIM),
                Span::styled(format!("{:<18} ", e.kind), theme::event_type(&e.kind)),
                Span::styled(
                    format!("{:<14} ", format!("{}@{}", e.channel, e.seq)),
                    theme::DIM,
                ),
                Span::raw(e.summary.clone()),
            ]))
        })
        .collect();
    let list = List::new(items)
        .block(block(&title, app.focus == Focus::Stream))
        .highlight_style(if app.focus == Focus::Stream {
            theme::SELECTED
        } else {
            Style::new()
        });
    let mut state = ListState::default().with_selected(Some(app.stream_selected));
    StatefulWidget::render(list, area, buf, &mut state);
}

fn render_footer(app: &App, area: Rect, buf: &mut Buffer) {
    let line = match &app.mode {
        Mode::Filter(input) => Line::from(vec![
            Span::styled(" filter ", theme::KEY),
            Span::raw(format!(" /{input}▏")),
            Span::styled(
                "   glob on type (entity.*) or text; Enter applies, Esc cancels",
                theme::DIM,
            ),
        ]),
        _ => {
            let mut spans = Vec::new();
            for (key, what) in [
                ("q", "quit"),
                ("space", if app.paused { "resume" } else { "pause" }),
                ("/", "filter"),
                ("tab", "pane"),
                ("j/k", "move"),
                ("enter", "open"),
                ("o", "focus org"),
                ("s", "sort"),
                ("c", "clear"),
                ("esc", "reset"),
                ("?", "help"),
            ] {
                spans.push(Span::styled(format!(" {key} "), theme::KEY));
                spans.push(Span::styled(format!(" {what}  "), theme::DIM));
            }
            Line::from(spans)
        }
    };
    Paragraph::new(line).render(area, buf);
}

fn help_text() -> Text<'static> {
    let rows = [
        ("q, Ctrl-C", "quit"),
        ("space", "pause the stream (counts go on); again to resume"),
        ("/", "filter: a glob on the type (entity.*) or any text"),
        ("esc", "drop the filter and the org focus"),
        ("tab", "move between the orgs table and the stream"),
        ("j/k, ↓/↑, PgDn/PgUp", "move the selection"),
        ("enter", "open the selected event as JSON"),
        ("o", "show only the selected org's events (again: all)"),
        ("s", "sort the orgs table by the next column"),
        ("c", "clear the stream and the counts"),
        ("?", "this help"),
    ];
    Text::from(
        rows.iter()
            .map(|(key, what)| {
                Line::from(vec![
                    Span::styled(format!("{key:<22}"), theme::VALUE),
                    Span::raw(*what),
                ])
            })
            .collect::<Vec<_>>(),
    )
}

fn render_popup(title: &str, text: Text<'_>, area: Rect, buf: &mut Buffer) {
    let [popup] = Layout::horizontal([Constraint::Percentage(80)])
        .flex(Flex::Center)
        .areas(area);
    let [popup] = Layout::vertical([Constraint::Percentage(80)])
        .flex(Flex::Center)
        .areas(popup);
    Clear.render(popup, buf);
    Paragraph::new(text)
        .wrap(Wrap { trim: false })
        .block(block(&format!("{title} (esc closes)"), true))
        .render(popup, buf);
}

/// The dashboard drawn on a `width`×`height` in-memory terminal, as text
/// (one line per row): what snapshot and end-to-end tests compare.
pub fn screen(app: &App, width: u16, height: u16) -> String {
    // TestBackend cannot fail: its error type is Infallible.
    let Ok(mut terminal) =
        ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height));
    if terminal
        .draw(|frame| frame.render_widget(app, frame.area()))
        .is_err()
    {
        return String::new();
    }
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            out.push_str(buffer[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;

    use crate::app::{Action, App, Feed, Key, ServerStatus, StatsSnapshot};

    fn draw(app: &App) -> String {
        super::screen(app, 120, 30)
    }

    fn sample() -> App {
        let mut app = App::new("http://127.0.0.1:8000");
        let t0 = Instant::now();
        app.update(Action::Tick(t0));
        app.update(Action::Feed(Feed::Status(ServerStatus::Connected)));
        let mut raw = crate::app::tests::stats_of("memory", &[("7", 2), ("8", 1)], 3);
        raw.events.published_total = 2;
        raw.events.delivered_total = 3;
        raw.slow_consumer_closes = 0;
        let stats = StatsSnapshot::from(&raw);
        app.on_stats(stats, t0);
        for (kind, channel, seq, payload) in [
            (
                "entity.created",
                "org:7",
                1,
                json!({"id": 1, "name": "Ann"}),
            ),
            ("chat.message", "org:8", 1, json!({"text": "hello"})),
            ("share.created", "user:42", 1, json!({"share_id": 5})),
        ] {
            app.update(Action::Feed(crate::app::envelope(&json!({
                "type": kind, "channel": channel, "seq": seq,
                "timestamp": "2026-01-01T12:00:00.123456Z", "payload": payload,
            }))));
        }
        app.update(Action::Tick(t0 + Duration::from_secs(1)));
        app
    }

    #[test]
    fn dashboard_snapshot() {
        insta::assert_snapshot!(draw(&sample()));
    }

    #[test]
    fn detail_and_help_popups() {
        let mut app = sample();
        app.update(Action::Key(Key::Enter));
        let screen = draw(&app);
        assert!(screen.contains("\"type\": \"share.created\""), "{screen}");
        app.update(Action::Key(Key::Esc));
        app.update(Action::Key(Key::Char('?')));
        insta::assert_snapshot!(draw(&app));
    }

    #[test]
    fn disconnected_and_paused_show_in_the_header() {
        let mut app = sample();
        app.update(Action::Feed(Feed::Status(ServerStatus::Disconnected(
            "connection refused".into(),
        ))));
        app.update(Action::Key(Key::Char(' ')));
        let screen = draw(&app);
        assert!(
            screen.contains("disconnected (connection refused), reconnecting"),
            "{screen}"
        );
        assert!(screen.contains("paused"), "{screen}");
    }

    #[test]
    fn a_cluster_shows_its_nodes_and_a_node_that_left() {
        let mut app = sample();
        // Nodes share a Redis; one memory node is never a cluster.
        if let Some(stats) = app.stats.as_mut() {
            stats.engine = "redis".into();
        }
        let node = |id: &str, connections: u64, delivered_total: u64| crate::app::NodeSnapshot {
            node_id: id.into(),
            connections,
            users: connections,
            last_seen: "2026-01-01T12:00:05.000000Z".into(),
            delivered_total,
        };
        let t0 = Instant::now();
        app.on_nodes(vec![node("aa11", 3, 100), node("bb22", 5, 0)], t0);
        app.on_nodes(vec![node("aa11", 3, 300)], t0 + Duration::from_secs(2));
        let screen = draw(&app);
        assert!(screen.contains("nodes (1 live)"), "{screen}");
        assert!(
            screen.contains("aa11") && screen.contains("100"),
            "{screen}"
        );
        assert!(
            screen.contains("bb22") && screen.contains("gone"),
            "{screen}"
        );
        assert!(screen.contains("12:00:05"), "{screen}");
        assert!(screen.contains("(cluster 3)"), "{screen}");
    }

    #[test]
    fn a_tiny_terminal_does_not_panic() {
        let app = sample();
        for (w, h) in [(1, 1), (10, 5), (40, 8)] {
            assert_eq!(super::screen(&app, w, h).lines().count(), usize::from(h));
        }
    }
}
