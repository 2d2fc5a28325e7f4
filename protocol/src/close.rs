//! WebSocket close codes and reasons, and what a client should do on each.

use std::fmt;

/// The server is shutting down, or dropped a peer that stopped answering
/// pings: reconnect with backoff and resume.
pub const GOING_AWAY: u16 = 1001;
/// Authentication or authorisation failed, or the user was disconnected:
/// do not retry with the same token.
pub const POLICY: u16 = 1008;
/// The client sent a frame over the size limit.
pub const TOO_BIG: u16 = 1009;
/// Unexpected server error: reconnect with backoff and resume.
pub const INTERNAL: u16 = 1011;
/// Slow consumer or connection limit: reconnect with backoff and resume.
pub const TRY_AGAIN_LATER: u16 = 1013;

/// The close reasons the server sends. A client decides by the code
/// ([`CloseCode::advice`]); a reason refines it (only `token expired` says
/// that a fresh token of the same identity will do).
pub mod reason {
    pub const SHUTDOWN: &str = "server shutting down";
    pub const PING_TIMEOUT: &str = "ping timeout";
    pub const MISSING_TOKEN: &str = "missing token";
    pub const INVALID_TOKEN: &str = "invalid token";
    pub const TOKEN_EXPIRED: &str = "token expired";
    pub const FORBIDDEN: &str = "forbidden";
    pub const REVOKED: &str = "revoked";
    pub const INVALID_SINCE: &str = "invalid since";
    pub const INVALID_ORGS: &str = "invalid orgs";
    pub const MESSAGE_TOO_BIG: &str = "message too big";
    pub const ENGINE_UNAVAILABLE: &str = "engine unavailable";
    pub const RESYNC: &str = "resync";
    pub const SLOW_CONSUMER: &str = "slow consumer";
    /// The client took none of the server's bytes for `--write-timeout`.
    pub const WRITE_TIMEOUT: &str = "write timeout";
    pub const CONNECTION_LIMIT: &str = "connection limit";
}

/// A close code, as the server uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1001
    GoingAway,
    /// 1008
    Policy,
    /// 1009
    TooBig,
    /// 1011
    Internal,
    /// 1013
    TryAgainLater,
    /// Any other code (1000 normal, 1006 no close frame, …).
    Other(u16),
}

/// What a client should do when the server closes with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// Reconnect with backoff and resume with `since` + `epoch`.
    Reconnect,
    /// Do not retry with the same token; a new one (or none) decides.
    NewToken,
    /// The client sent something it must not send again; a bug to report.
    FixFrame,
    /// The connection is over as the client asked, or for a reason this
    /// protocol does not name.
    Stop,
}

impl CloseCode {
    pub const fn from_u16(code: u16) -> Self {
        match code {
            GOING_AWAY => Self::GoingAway,
            POLICY => Self::Policy,
            TOO_BIG => Self::TooBig,
            INTERNAL => Self::Internal,
            TRY_AGAIN_LATER => Self::TryAgainLater,
            other => Self::Other(other),
        }
    }

    pub const fn as_u16(self) -> u16 {
        match self {
            Self::GoingAway => GOING_AWAY,
            Self::Policy => POLICY,
            Self::TooBig => TOO_BIG,
            Self::Internal => INTERNAL,
            Self::TryAgainLater => TRY_AGAIN_LATER,
            Self::Other(code) => code,
        }
    }

    /// What a client should do.
    pub const fn advice(self) -> Advice {
        match self {
            Self::GoingAway | Self::Internal | Self::TryAgainLater => Advice::Reconnect,
            // 1006: the connection dropped without a close frame; 1012: a
            // proxy or server restarting.
            Self::Other(1006 | 1012) => Advice::Reconnect,
            Self::Policy => Advice::NewToken,
            Self::TooBig => Advice::FixFrame,
            Self::Other(_) => Advice::Stop,
        }
    }
}

/// A close the server sent: its code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: CloseCode,
    pub reason: String,
}

impl Close {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code: CloseCode::from_u16(code),
            reason: reason.into(),
        }
    }

    /// The token's time ran out: the same identity with a fresh token may
    /// reconnect at once.
    pub fn is_token_expired(&self) -> bool {
        self.code == CloseCode::Policy && self.reason == reason::TOKEN_EXPIRED
    }

    pub fn advice(&self) -> Advice {
        self.code.advice()
    }
}

/// `1008 token expired`, or just the code when there is no reason.
impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{}", self.code.as_u16())
        } else {
            write!(f, "{} {}", self.code.as_u16(), self.reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_carry_their_advice() {
        for code in [1001, 1008, 1009, 1011, 1013, 1000, 1006] {
            assert_eq!(CloseCode::from_u16(code).as_u16(), code);
        }
        assert_eq!(CloseCode::from_u16(1013).advice(), Advice::Reconnect);
        assert_eq!(CloseCode::from_u16(1006).advice(), Advice::Reconnect);
        assert_eq!(CloseCode::from_u16(1008).advice(), Advice::NewToken);
        assert_eq!(CloseCode::from_u16(1009).advice(), Advice::FixFrame);
        assert_eq!(CloseCode::from_u16(1000).advice(), Advice::Stop);
        let expired = Close::new(1008, reason::TOKEN_EXPIRED);
        assert!(expired.is_token_expired());
        assert_eq!(expired.to_string(), "1008 token expired");
        assert!(!Close::new(1008, reason::REVOKED).is_token_expired());
        assert_eq!(Close::new(1005, "").to_string(), "1005");
    }

    /// clients/js/hrrt.js carries the same table (CLOSE_ADVICE): a browser
    /// tab and `hrrt listen` must do the same at every code.
    #[test]
    fn the_js_client_advises_as_this_crate_does() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/js/hrrt.js");
        let js = std::fs::read_to_string(path).expect("clients/js/hrrt.js");
        let start = js
            .find("export const CLOSE_ADVICE = Object.freeze({")
            .expect("hrrt.js exports CLOSE_ADVICE");
        let table = &js[start..];
        let table = &table[table.find('{').unwrap_or(0) + 1..table.find("});").unwrap_or(0)];
        let mut listed = Vec::new();
        for line in table.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (code, advice) = line.split_once(':').expect("code: 'advice'");
            let code: u16 = code.trim().parse().expect("a close code");
            let advice = advice.trim().trim_end_matches(',').trim_matches('\'');
            let expected = match CloseCode::from_u16(code).advice() {
                Advice::Reconnect => "reconnect",
                Advice::NewToken => "new_token",
                Advice::FixFrame => "fix_frame",
                Advice::Stop => "stop",
            };
            assert_eq!(advice, expected, "close code {code}");
            listed.push(code);
        }
        // Every code this crate does not stop at is in the JS table (the JS
        // stops at a code it does not list).
        for code in 1000..=4999 {
            if CloseCode::from_u16(code).advice() != Advice::Stop {
                assert!(listed.contains(&code), "hrrt.js CLOSE_ADVICE lacks {code}");
            }
        }
    }
}
