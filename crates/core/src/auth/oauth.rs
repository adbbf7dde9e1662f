//! This server as an OAuth 2.1 resource server: JWT access tokens checked
//! against the issuer's published keys (JWKS), audience and issuer.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use super::scope::Scopes;
use crate::config::OAuthConfig;

/// Signing algorithms accepted; the token's header never chooses others.
const ALLOWED: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256];
/// Least time between two fetches caused by an unknown key id.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    client_id: Option<String>,
    /// RFC 9068: space-separated.
    #[serde(default)]
    scope: Option<String>,
    /// Some servers use `scp`, a string or a list.
    #[serde(default)]
    scp: Option<serde_json::Value>,
}

/// Why a token was refused; the text goes into `error_description`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signed with an unknown key")]
    UnknownKey,
    #[error("token algorithm not accepted")]
    Algorithm,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token is for another audience")]
    Audience,
    #[error("token from another issuer")]
    Issuer,
    #[error("bad token signature")]
    Signature,
    #[error("token lacks the {0} claim")]
    MissingClaim(String),
    #[error("signing keys unavailable: {0}")]
    Keys(String),
    #[error("token refused: {0}")]
    Other(String),
}

/// Who a valid token speaks for.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    pub subject: String,
    pub scopes: Scopes,
}

struct Keys {
    set: Arc<JwkSet>,
    fetched: Option<Instant>,
}

pub struct OAuthVerifier {
    config: OAuthConfig,
    http: reqwest::Client,
    keys: RwLock<Keys>,
}

impl OAuthVerifier {
    pub fn new(config: OAuthConfig) -> Self {
        Self {
            config,
            http: reqwest::Client::new(),
            keys: RwLock::new(Keys {
                set: Arc::new(JwkSet { keys: Vec::new() }),
                fetched: None,
            }),
        }
    }

    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// Check `token`; keys are fetched when stale or when the token names
    /// a key not seen yet (the issuer rotated).
    pub async fn verify(&self, token: &str) -> Result<TokenIdentity, TokenError> {
        let header = decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !ALLOWED.contains(&header.alg) {
            return Err(TokenError::Algorithm);
        }
        let kid = header.kid.clone().ok_or(TokenError::UnknownKey)?;
        let set = self.keys_with(&kid).await?;
        let jwk = set.find(&kid).ok_or(TokenError::UnknownKey)?;
        let family_matches = match (&jwk.algorithm, header.alg) {
            (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
            (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => {
                p.curve == EllipticCurve::P256
            }
            _ => false,
        };
        let declared_matches = jwk
            .common
            .key_algorithm
            .is_none_or(|ka| Algorithm::try_from(ka).is_ok_and(|a| a == header.alg));
        let for_encryption = matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption));
        if !family_matches || !declared_matches || for_encryption {
            return Err(TokenError::Algorithm);
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| TokenError::Other(e.to_string()))?;
        // Built per token: every algorithm listed must be of the key's family.
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.config.audience]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        let claims = decode::<Claims>(token, &key, &validation)
            .map_err(|e| classify(e.kind()))?
            .claims;
        Ok(TokenIdentity {
            subject: claims
                .sub
                .or(claims.client_id)
                .unwrap_or_else(|| "oauth-client".into()),
            scopes: scopes_of(claims.scope, claims.scp),
        })
    }

    async fn keys_with(&self, kid: &str) -> Result<Arc<JwkSet>, TokenError> {
        let refresh = Duration::from_secs(self.config.jwks_refresh_secs);
        let (set, fetched) = {
            let keys = self.keys.read().expect("jwks lock");
            (keys.set.clone(), keys.fetched)
        };
        let stale = fetched.is_none_or(|at| at.elapsed() >= refresh);
        let unknown = set.find(kid).is_none()
            && fetched.is_none_or(|at| at.elapsed() >= REFETCH_AT_MOST_EVERY);
        if !(stale || unknown) {
            return Ok(set);
        }
        match self.fetch().await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                *self.keys.write().expect("jwks lock") = Keys {
                    set: fresh.clone(),
                    fetched: Some(Instant::now()),
                };
                Ok(fresh)
            }
            // The issuer is unreachable: keep using the keys we have.
            Err(e) if !set.keys.is_empty() => {
                tracing::warn!(error = %e, "cannot refresh the signing keys; using the old ones");
                Ok(set)
            }
            Err(e) => Err(e),
        }
    }

    async fn fetch(&self) -> Result<JwkSet, TokenError> {
        let fail = |e: reqwest::Error| TokenError::Keys(format!("{}: {e}", self.config.jwks_url));
        self.http
            .get(&self.config.jwks_url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(fail)?
            .json::<JwkSet>()
            .await
            .map_err(fail)
    }
}

fn scopes_of(scope: Option<String>, scp: Option<serde_json::Value>) -> Scopes {
    if let Some(scope) = scope {
        return Scopes::parse(&scope);
    }
    match scp {
        Some(serde_json::Value::String(list)) => Scopes::parse(&list),
        Some(serde_json::Value::Array(items)) => {
            Scopes::new(items.iter().filter_map(|i| i.as_str().map(str::to_string)))
        }
        _ => Scopes::default(),
    }
}

fn classify(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => TokenError::Algorithm,
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) => {
            TokenError::Malformed
        }
        other => TokenError::Other(format!("{other:?}")),
    }
}
