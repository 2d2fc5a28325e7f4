//! Every style the dashboard uses, in one place.

use ratatui::style::{Color, Modifier, Style};

pub const TITLE: Style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
pub const LABEL: Style = Style::new().fg(Color::DarkGray);
pub const VALUE: Style = Style::new().add_modifier(Modifier::BOLD);
pub const GOOD: Style = Style::new().fg(Color::Green).add_modifier(Modifier::BOLD);
pub const BAD: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
pub const WARN: Style = Style::new().fg(Color::Yellow);
pub const DIM: Style = Style::new().fg(Color::DarkGray);
pub const BORDER: Style = Style::new().fg(Color::DarkGray);
pub const BORDER_FOCUSED: Style = Style::new().fg(Color::Cyan);
pub const SELECTED: Style = Style::new()
    .bg(Color::DarkGray)
    .add_modifier(Modifier::BOLD);
pub const KEY: Style = Style::new().fg(Color::Black).bg(Color::Cyan);
pub const SPARKLINE: Style = Style::new().fg(Color::Cyan);

/// The colour of an event type, by its first word.
pub fn event_type(kind: &str) -> Style {
    let color = match kind.split('.').next() {
        Some("entity") => Color::Green,
        Some("chat") => Color::Cyan,
        Some("share") => Color::Magenta,
        _ => Color::Yellow,
    };
    Style::new().fg(color)
}
