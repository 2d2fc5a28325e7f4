//! Tokens: HS256 JWTs signed with one shared secret; the claims, minting
//! and verification.
//!
//! The algorithm is pinned to HS256 so a token cannot choose how it is
//! checked (`alg: none`, or an RSA public key used as an HMAC secret).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::close::reason;
use crate::ids::{IdValue, OrgId, UserId};
pub use crate::time::{MAX_TIMESTAMP, unix_now};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Connects to `/ws`; reads its org's and its own user channel.
    #[default]
    User,
    /// Connects to `/ws` and may watch any org; calls the read APIs.
    Admin,
    /// The HR backend: publishes and calls the read APIs; no `/ws`.
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            "service" => Ok(Role::Service),
            other => Err(format!("unknown role '{other}' (user, admin or service)")),
        }
    }
}

/// The verified content of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    /// Required for `user` and `admin` tokens; optional for `service`.
    pub org: Option<OrgId>,
    pub role: Role,
    /// Expiry, whole seconds since the UNIX epoch (a fraction is rounded
    /// down: the token is treated as expiring up to a second early).
    pub exp: u64,
    /// When the token was issued (whole seconds since the UNIX epoch,
    /// rounded down), if it says; a revocation refuses tokens issued at
    /// or before it.
    pub iat: Option<u64>,
}

/// Why a token was refused. The `Display` text is the WebSocket close
/// reason, so it is short and stable. *compat*
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{}", reason::MISSING_TOKEN)]
    Missing,
    #[error("{}", reason::INVALID_TOKEN)]
    Invalid,
    #[error("{}", reason::TOKEN_EXPIRED)]
    Expired,
    #[error("{}", reason::FORBIDDEN)]
    Forbidden,
    /// The user's tokens up to this one's `iat` were revoked
    /// (`POST /api/disconnect` with `"revoke": true`).
    #[error("{}", reason::REVOKED)]
    Revoked,
    /// `iat` or `nbf` is further in the future than the clock skew
    /// allows: the minting host's clock runs ahead (or the token lies, to
    /// outlive a revocation). Closed as `invalid token`, like any other
    /// token that does not hold.
    #[error("{}", reason::INVALID_TOKEN)]
    FromTheFuture,
}

impl AuthError {
    /// What a person reading an HTTP error or a log line needs beyond the
    /// close reason: the cause and what to check.
    pub fn detail(self) -> &'static str {
        match self {
            AuthError::Missing => "missing token",
            AuthError::Invalid => {
                "invalid token: not a JWT signed (HS256) with this server's secret, \
                 or its claims are malformed"
            }
            AuthError::Expired => "token expired",
            AuthError::Forbidden => "forbidden",
            AuthError::Revoked => "token revoked: mint a new one",
            AuthError::FromTheFuture => {
                "invalid token: its iat or nbf is further in the future than --clock-skew \
                 allows; check the clock of the host that minted it"
            }
        }
    }
}

/// How far in the future a token's `iat` or `nbf` may be by default: the
/// clocks of the minting backend and this server may differ by this much.
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 5;

/// A JWT NumericDate (RFC 7519 §2): seconds since the epoch as a JSON
/// number, fractions allowed. Anything else (a string, a negative or
/// non-finite number) does not deserialize, and the token is invalid.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
struct NumericDate(f64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NumericDate;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a NumericDate: seconds since the epoch, as a JSON number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<NumericDate, E> {
                Ok(NumericDate(v as f64))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<NumericDate, E> {
                u64::try_from(v)
                    .map(|v| NumericDate(v as f64))
                    .map_err(|_| E::custom("a negative NumericDate"))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<NumericDate, E> {
                if v.is_finite() && v >= 0.0 {
                    Ok(NumericDate(v))
                } else {
                    Err(E::custom("a negative or non-finite NumericDate"))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl NumericDate {
    /// Whole seconds, rounded down; `None` past [`MAX_TIMESTAMP`].
    fn whole_secs(self) -> Option<u64> {
        (self.0 <= MAX_TIMESTAMP as f64).then(|| self.0.floor() as u64)
    }
}

/// The claims as they arrive: ids may be strings or integers.
#[derive(Deserialize)]
struct RawClaims {
    sub: IdValue,
    org_id: Option<IdValue>,
    exp: NumericDate,
    iat: Option<NumericDate>,
    nbf: Option<NumericDate>,
    #[serde(default)]
    role: Role,
}

/// The claims `mint` signs.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    pub exp: u64,
    pub iat: u64,
    pub role: Role,
}

/// Checks tokens against the shared secret.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// How far `iat` and `nbf` may be in the future.
    skew: std::time::Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier { .. }")
    }
}

impl Verifier {
    /// Checks tokens signed with `secret`, allowing
    /// [`DEFAULT_CLOCK_SKEW_SECS`] of clock skew.
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        // The time claims are NumericDates, which may carry a fraction;
        // jsonwebtoken reads them as integers, so they are checked here.
        // `sub` too: jsonwebtoken only accepts a string there, and the HR
        // backend signs integer ids.
        validation.set_required_spec_claims::<&str>(&[]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            skew: std::time::Duration::from_secs(DEFAULT_CLOCK_SKEW_SECS),
        }
    }

    /// Allows `iat` and `nbf` up to `skew` in the future (`--clock-skew`).
    pub fn with_clock_skew(mut self, skew: std::time::Duration) -> Self {
        self.skew = skew;
        self
    }

    /// The clock skew allowed.
    pub fn clock_skew(&self) -> std::time::Duration {
        self.skew
    }

    /// Verifies signature, algorithm and times, and normalises the ids.
    ///
    /// No leeway on `exp`: the server re-checks it on a timer, and a
    /// leeway would let an expired token connect and be dropped a minute
    /// later. `iat` and `nbf` may be up to the skew ahead; further, the
    /// token is refused ([`AuthError::FromTheFuture`]), so that a token
    /// cannot outlive a revocation by claiming a later issue time.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_at(token, unix_now_f64())
    }

    fn verify_at(&self, token: &str, now: f64) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(|_| AuthError::Invalid)?;
        let claims = data.claims;
        let exp = claims.exp.whole_secs().ok_or(AuthError::Invalid)?;
        let iat = match claims.iat {
            Some(iat) => Some(iat.whole_secs().ok_or(AuthError::Invalid)?),
            None => None,
        };
        if claims.nbf.is_some_and(|nbf| nbf.whole_secs().is_none()) {
            return Err(AuthError::Invalid);
        }
        let latest = now + self.skew.as_secs_f64();
        if claims.iat.is_some_and(|iat| iat.0 > latest)
            || claims.nbf.is_some_and(|nbf| nbf.0 > latest)
        {
            return Err(AuthError::FromTheFuture);
        }
        // A token is expired at `exp` itself.
        if claims.exp.0 <= now {
            return Err(AuthError::Expired);
        }
        let user = UserId::new(&claims.sub.into_string()).map_err(|_| AuthError::Invalid)?;
        let org = match claims.org_id {
            Some(org) => Some(OrgId::new(&org.into_string()).map_err(|_| AuthError::Invalid)?),
            None => None,
        };
        if org.is_none() && claims.role != Role::Service {
            return Err(AuthError::Invalid);
        }
        Ok(Identity {
            user,
            org,
            role: claims.role,
            exp,
            iat,
        })
    }
}

/// Seconds since the UNIX epoch, with the fraction.
pub fn unix_now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Signs claims with the shared secret (HS256). Used by `hrrt token mint`,
/// `--dev` and tests.
pub fn mint(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

impl Claims {
    /// Claims for `user` in `org` with `role`, valid for at least
    /// `ttl_secs` from now: `exp` is in whole seconds, so it is rounded up
    /// (a 1-second token minted at 10.9 s expires at 12, not at 11).
    pub fn new(user: &str, org: Option<&str>, role: Role, ttl_secs: u64) -> Self {
        let now = unix_now_f64();
        Self {
            sub: user.to_owned(),
            org_id: org.map(str::to_owned),
            exp: (now.ceil() as u64).saturating_add(ttl_secs),
            iat: now.floor() as u64,
            role,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test-secret";

    fn token(claims: serde_json::Value, alg: Algorithm, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn integer_ids_are_normalised() {
        let t = token(
            serde_json::json!({"sub": 42, "org_id": 7, "exp": unix_now() + 60}),
            Algorithm::HS256,
            SECRET,
        );
        let id = Verifier::new(SECRET).verify(&t).unwrap();
        assert_eq!(id.user.as_str(), "42");
        assert_eq!(id.org.unwrap().as_str(), "7");
        assert_eq!(id.role, Role::User);
    }

    #[test]
    fn refuses_other_algorithms_wrong_secret_and_expiry() {
        let v = Verifier::new(SECRET);
        let claims = serde_json::json!({"sub": "1", "org_id": "1", "exp": unix_now() + 60});
        assert_eq!(
            v.verify(&token(claims.clone(), Algorithm::HS512, SECRET)),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            v.verify(&token(claims, Algorithm::HS256, "other")),
            Err(AuthError::Invalid)
        );
        // alg "none": header {"alg":"none"} and an empty signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIxIiwib3JnX2lkIjoiMSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert_eq!(v.verify(none), Err(AuthError::Invalid));
        let expired = serde_json::json!({"sub": "1", "org_id": "1", "exp": unix_now() - 1});
        assert_eq!(
            v.verify(&token(expired, Algorithm::HS256, SECRET)),
            Err(AuthError::Expired)
        );
        assert_eq!(v.verify(""), Err(AuthError::Missing));
        assert_eq!(v.verify("garbage"), Err(AuthError::Invalid));
    }

    #[test]
    fn user_tokens_need_an_org() {
        let v = Verifier::new(SECRET);
        let user = serde_json::json!({"sub": "1", "exp": unix_now() + 60});
        assert_eq!(
            v.verify(&token(user, Algorithm::HS256, SECRET)),
            Err(AuthError::Invalid)
        );
        let service =
            serde_json::json!({"sub": "backend", "role": "service", "exp": unix_now() + 60});
        assert_eq!(
            v.verify(&token(service, Algorithm::HS256, SECRET))
                .unwrap()
                .role,
            Role::Service
        );
    }

    #[test]
    fn times_past_year_9999_are_invalid_not_a_panic() {
        let v = Verifier::new(SECRET);
        let ms = (unix_now() + 3600) * 1000;
        let t = token(
            serde_json::json!({"sub": "1", "org_id": "1", "exp": ms}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(v.verify(&t), Err(AuthError::Invalid));
        for exp in [
            serde_json::json!(u64::MAX),
            serde_json::json!(-1),
            serde_json::json!(1.5e300),
        ] {
            let t = token(
                serde_json::json!({"sub": "1", "org_id": "1", "exp": exp}),
                Algorithm::HS256,
                SECRET,
            );
            assert!(v.verify(&t).is_err());
        }
        let t = token(
            serde_json::json!({"sub": "1", "org_id": "1", "exp": MAX_TIMESTAMP, "iat": MAX_TIMESTAMP + 1}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(v.verify(&t), Err(AuthError::Invalid));
        let t = token(
            serde_json::json!({"sub": "1", "org_id": "1", "exp": MAX_TIMESTAMP, "iat": 5}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(v.verify(&t).unwrap().iat, Some(5));
    }

    #[test]
    fn numeric_dates_may_carry_a_fraction_but_not_be_strings() {
        let v = Verifier::new(SECRET);
        let now = unix_now() as f64;
        let t = token(
            serde_json::json!({"sub": "1", "org_id": "1", "exp": now + 100.5, "iat": now - 0.25, "nbf": now - 1.5}),
            Algorithm::HS256,
            SECRET,
        );
        let id = v.verify(&t).unwrap();
        assert_eq!(id.exp, (now + 100.5).floor() as u64);
        assert_eq!(id.iat, Some((now - 0.25).floor() as u64));
        for claims in [
            serde_json::json!({"sub": "1", "org_id": "1", "exp": (now + 100.0).to_string()}),
            serde_json::json!({"sub": "1", "org_id": "1", "exp": now + 100.0, "iat": "5"}),
            serde_json::json!({"sub": "1", "org_id": "1", "exp": now + 100.0, "nbf": -1}),
            serde_json::json!({"sub": "1", "org_id": "1", "exp": now + 100.0, "nbf": 1e300}),
            serde_json::json!({"sub": "1", "org_id": "1"}),
        ] {
            let t = token(claims.clone(), Algorithm::HS256, SECRET);
            assert_eq!(v.verify(&t), Err(AuthError::Invalid), "{claims}");
        }
        // Expired at `exp` itself, to the fraction.
        let t = token(
            serde_json::json!({"sub": "1", "org_id": "1", "exp": 1000.5}),
            Algorithm::HS256,
            SECRET,
        );
        assert!(v.verify_at(&t, 1000.4).is_ok());
        assert_eq!(v.verify_at(&t, 1000.5), Err(AuthError::Expired));
    }

    #[test]
    fn iat_and_nbf_may_be_ahead_by_the_skew_and_no_more() {
        let v = Verifier::new(SECRET).with_clock_skew(std::time::Duration::from_secs(5));
        let now = 1_000_000.0;
        let at = |claim: &str, when: f64| {
            let mut claims = serde_json::json!({"sub": "1", "org_id": "1", "exp": now + 3600.0});
            claims[claim] = serde_json::json!(when);
            v.verify_at(&token(claims, Algorithm::HS256, SECRET), now)
        };
        for claim in ["iat", "nbf"] {
            assert!(at(claim, now + 5.0).is_ok(), "{claim}");
            assert!(at(claim, now - 3600.0).is_ok(), "{claim}");
            assert_eq!(
                at(claim, now + 5.5),
                Err(AuthError::FromTheFuture),
                "{claim}"
            );
            assert_eq!(
                at(claim, now + 3600.0),
                Err(AuthError::FromTheFuture),
                "{claim}"
            );
        }
        let strict = Verifier::new(SECRET).with_clock_skew(std::time::Duration::ZERO);
        let t = token(
            serde_json::json!({"sub": "1", "org_id": "1", "exp": now + 60.0, "iat": now + 1.0}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(strict.verify_at(&t, now), Err(AuthError::FromTheFuture));
    }

    #[test]
    fn mint_round_trips() {
        let t = mint(SECRET, &Claims::new("42", Some("7"), Role::Admin, 60)).unwrap();
        let id = Verifier::new(SECRET).verify(&t).unwrap();
        assert_eq!(id.role, Role::Admin);
    }
}
