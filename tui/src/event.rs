//! The dashboard loop: terminal input, the feed, and a frame tick.

use std::time::{Duration, Instant};

use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use futures_util::StreamExt;
use ratatui::DefaultTerminal;
use tokio::sync::mpsc;

use crate::app::{Action, App, Feed, Key};

/// Frames drawn per second at most; events arriving faster are taken in
/// bulk between frames, so a flood costs no extra drawing.
pub const FPS: u64 = 20;

/// The most feed messages handled between two frames, so input stays
/// responsive under a flood.
const FEED_PER_FRAME: usize = 20_000;

/// Opens the terminal, runs the dashboard until the user quits (or the
/// feed stops it), and restores the terminal, also on error or panic.
/// Answers why the feed stopped it ([`Feed::Stop`]), if it did.
pub async fn run(app: App, feed: mpsc::Receiver<Feed>) -> std::io::Result<Option<String>> {
    let mut terminal = ratatui::init();
    let result = run_in(&mut terminal, app, feed).await;
    ratatui::restore();
    result
}

async fn run_in(
    terminal: &mut DefaultTerminal,
    mut app: App,
    mut feed: mpsc::Receiver<Feed>,
) -> std::io::Result<Option<String>> {
    let mut input = EventStream::new();
    let mut frame = tokio::time::interval(Duration::from_millis(1000 / FPS));
    frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut dirty = true;
    let mut feed_open = true;
    while !app.should_quit {
        tokio::select! {
            _ = frame.tick() => {
                app.update(Action::Tick(Instant::now()));
                if dirty {
                    terminal.draw(|f| f.render_widget(&app, f.area()))?;
                    dirty = false;
                }
            }
            message = feed.recv(), if feed_open => {
                match message {
                    Some(first) => {
                        app.update(Action::Feed(first));
                        let mut taken = 1;
                        while taken < FEED_PER_FRAME {
                            match feed.try_recv() {
                                Ok(more) => app.update(Action::Feed(more)),
                                Err(_) => break,
                            }
                            taken += 1;
                        }
                    }
                    None => feed_open = false,
                }
                dirty = true;
            }
            event = input.next() => {
                match event {
                    Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                        if let Some(key) = map_key(key) {
                            app.update(Action::Key(key));
                        }
                    }
                    Some(Ok(Event::Resize(..))) => {
                        terminal.autoresize()?;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => break,
                }
                dirty = true;
            }
        }
    }
    Ok(app.stopped)
}

/// crossterm's key, as the app knows keys.
pub fn map_key(key: KeyEvent) -> Option<Key> {
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Some(Key::CtrlC);
    }
    Some(match key.code {
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}
