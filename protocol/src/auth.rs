//! Tokens: HS256 JWTs signed with one shared secret; the claims, minting
//! and verification.
//!
//! The algorithm is pinned to HS256 so a token cannot choose how it is
//! checked (`alg: none`, or an RSA public key used as an HMAC secret).

use jsonwebtoken::errors::ErrorKind;
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
    /// Expiry, seconds since the UNIX epoch.
    pub exp: u64,
    /// When the token was issued (seconds since the UNIX epoch), if it
    /// says; a revocation refuses tokens issued at or before it.
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
}

/// The claims as they arrive: ids may be strings or integers.
#[derive(Deserialize)]
struct RawClaims {
    sub: IdValue,
    org_id: Option<IdValue>,
    exp: u64,
    iat: Option<u64>,
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
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier { .. }")
    }
}

impl Verifier {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        // `sub` is checked by our own claims type: jsonwebtoken only accepts a
        // string there, and the HR backend signs integer ids.
        validation.set_required_spec_claims(&["exp"]);
        // The server re-checks `exp` itself on a timer; a leeway would let
        // an expired token connect and be dropped a minute later.
        validation.leeway = 0;
        validation.validate_exp = true;
        Self {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Verifies signature, algorithm and expiry, and normalises the ids.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data =
            jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid,
                }
            })?;
        let claims = data.claims;
        if claims.exp > MAX_TIMESTAMP || claims.iat.is_some_and(|iat| iat > MAX_TIMESTAMP) {
            return Err(AuthError::Invalid);
        }
        // jsonwebtoken compares with `<`; a token is expired at `exp` itself.
        if claims.exp <= unix_now() {
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
            exp: claims.exp,
            iat: claims.iat,
        })
    }
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
    /// Claims for `user` in `org` with `role`, valid for `ttl_secs` from now.
    pub fn new(user: &str, org: Option<&str>, role: Role, ttl_secs: u64) -> Self {
        let now = unix_now();
        Self {
            sub: user.to_owned(),
            org_id: org.map(str::to_owned),
            exp: now.saturating_add(ttl_secs),
            iat: now,
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
    fn mint_round_trips() {
        let t = mint(SECRET, &Claims::new("42", Some("7"), Role::Admin, 60)).unwrap();
        let id = Verifier::new(SECRET).verify(&t).unwrap();
        assert_eq!(id.role, Role::Admin);
    }
}
