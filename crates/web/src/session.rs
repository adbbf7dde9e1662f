//! Signing in: an API key, given once on the sign-in page, becomes a
//! session held in an `HttpOnly`, `SameSite=Strict` cookie scoped to `/ui`.
//! The key itself is never stored: the session remembers the key's id, and
//! every request looks the key up again, so a revoked key ends its sessions
//! at once and a key's changed scopes apply at the next page.
//!
//! Every request that changes something (any method but GET and HEAD)
//! must carry the session's CSRF token, in the `x-csrf-token` header (the
//! script's calls) or a `csrf` form field (the pages' forms); the cookie
//! alone is refused. Sessions live in memory: a restart signs everybody out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use jetsonmind_core::auth::keys::{KeyStore, constant_time_eq, random_hex};
use jetsonmind_core::auth::{Principal, Scopes};
use jetsonmind_core::connections::ConnectionId;
use sha2::{Digest, Sha256};

use crate::Dashboard;
use crate::config::UiConfig;

const COOKIE: &str = "jm_session";
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
const CSRF_FIELD: &str = "csrf";
/// The most of a form the CSRF check reads (the settings form is the largest).
const MAX_FORM_BYTES: usize = 1 << 20;

/// A signed-in browser, as a handler sees it.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub principal: Principal,
    pub csrf: String,
}

struct Entry {
    /// The API key signed in with; `None` when authentication is off.
    key_id: Option<String>,
    session: Session,
    last_seen: Instant,
}

pub(crate) struct Sessions {
    /// By the sha256 of the cookie's token: looking a token up takes no
    /// time that depends on how much of it matches.
    open: Mutex<HashMap<String, Entry>>,
    pub(crate) ttl: Duration,
    max: usize,
}

impl Sessions {
    pub fn new(config: &UiConfig) -> Self {
        Self {
            open: Mutex::default(),
            ttl: Duration::from_secs(config.session_ttl_secs),
            max: config.max_sessions,
        }
    }

    /// A new session for `principal`; its cookie token.
    pub(crate) fn open(
        &self,
        principal: Principal,
        key_id: Option<String>,
    ) -> Option<(String, Session)> {
        let token = random_hex(32).ok()?;
        let session = Session {
            principal,
            csrf: random_hex(32).ok()?,
        };
        let mut open = self.open.lock().expect("sessions lock");
        let now = Instant::now();
        open.retain(|_, entry| now.duration_since(entry.last_seen) < self.ttl);
        while open.len() >= self.max {
            let idlest = open
                .iter()
                .min_by_key(|(_, entry)| entry.last_seen)
                .map(|(id, _)| id.clone());
            match idlest {
                Some(id) => open.remove(&id),
                None => break,
            };
        }
        let entry = Entry {
            key_id,
            session: session.clone(),
            last_seen: now,
        };
        open.insert(digest(&token), entry);
        Some((token, session))
    }

    /// The live session of `token`, its caller as the key now says.
    fn find(&self, token: &str, keys: &KeyStore) -> Option<Session> {
        let id = digest(token);
        let mut open = self.open.lock().expect("sessions lock");
        let entry = open.get_mut(&id)?;
        let now = Instant::now();
        let scopes = match &entry.key_id {
            None => None,
            Some(key_id) => current_scopes(keys, key_id),
        };
        let expired = now.duration_since(entry.last_seen) >= self.ttl;
        let revoked = entry.key_id.is_some() && scopes.is_none();
        if expired || revoked {
            open.remove(&id);
            return None;
        }
        entry.last_seen = now;
        if let Some(scopes) = scopes {
            entry.session.principal.scopes = scopes;
        }
        Some(entry.session.clone())
    }

    pub(crate) fn close(&self, token: &str) {
        self.open
            .lock()
            .expect("sessions lock")
            .remove(&digest(token));
    }
}

fn current_scopes(keys: &KeyStore, key_id: &str) -> Option<Scopes> {
    let keys = keys.list().ok()?;
    let key = keys.into_iter().find(|k| k.id == key_id)?;
    Some(Scopes::new(key.scopes))
}

fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

pub(crate) fn set_cookie(token: &str, max_age: Duration) -> HeaderValue {
    let value = format!(
        "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Every signed-in route: the session (or, with authentication off, a new
/// one on the first visit), its CSRF token on changes, and the caller put
/// in the request for the handlers (and for the OpenAI routes under it).
pub(crate) async fn require(
    State(ui): State<Arc<Dashboard>>,
    request: Request,
    next: Next,
) -> Response {
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    let found = cookie_token(request.headers()).and_then(|t| ui.sessions.find(t, ui.auth.keys()));
    let (session, new_token) = match found {
        Some(session) => (session, None),
        None if safe && !ui.auth.required() => match ui.sessions.open(Principal::local(), None) {
            Some((token, session)) => (session, Some(token)),
            None => return unavailable(),
        },
        None => return signed_out(&request),
    };
    let mut request = request;
    if !safe {
        request = match with_csrf_checked(request, &session.csrf).await {
            Ok(request) => request,
            Err(refusal) => return refusal,
        };
    }
    if let Some(id) = request.extensions().get::<ConnectionId>() {
        ui.connections.seen(*id, &session.principal.id);
    }
    request.extensions_mut().insert(session.principal.clone());
    request.extensions_mut().insert(session);
    let mut response = next.run(request).await;
    if let Some(token) = new_token {
        let cookie = set_cookie(&token, ui.sessions.ttl);
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The request, when it carries `expected` as its CSRF token; the form
/// body read for the check is handed on whole.
async fn with_csrf_checked(request: Request, expected: &str) -> Result<Request, Response> {
    let forged = || {
        (
            StatusCode::FORBIDDEN,
            "Forbidden: missing or wrong CSRF token",
        )
            .into_response()
    };
    let given = request
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(given) = given {
        return match constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            true => Ok(request),
            false => Err(forged()),
        };
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(forged());
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| (StatusCode::PAYLOAD_TOO_LARGE, "the form is too large").into_response())?;
    let field = form_urlencoded::parse(&bytes)
        .find(|(name, _)| name == CSRF_FIELD)
        .map(|(_, value)| value.into_owned());
    match field {
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => {
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        _ => Err(forged()),
    }
}

/// Pages send the browser to sign in; anything else is told to.
fn signed_out(request: &Request) -> Response {
    let wants_page = request.method() == Method::GET
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"));
    match wants_page {
        true => Redirect::to("/ui/login").into_response(),
        false => (StatusCode::UNAUTHORIZED, "sign in at /ui/login first").into_response(),
    }
}

pub(crate) fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "cannot start a session: no randomness",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsonmind_core::auth::keys::KeyStore;

    fn config(max_sessions: usize) -> UiConfig {
        UiConfig {
            max_sessions,
            ..UiConfig::default()
        }
    }

    #[test]
    fn a_revoked_key_ends_its_sessions_and_scopes_follow_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(dir.path());
        let key = keys.create("ops", &["metrics".into()]).unwrap();
        let sessions = Sessions::new(&config(4));
        let principal = Principal::api_key(&key.id, "ops", Scopes::new(["metrics"]));
        let (token, _) = sessions.open(principal, Some(key.id.clone())).unwrap();
        let session = sessions.find(&token, &keys).expect("signed in");
        assert!(session.principal.grants("metrics"));
        assert!(sessions.find("not-the-token", &keys).is_none());
        keys.revoke(&key.id).unwrap();
        assert!(
            sessions.find(&token, &keys).is_none(),
            "revoked key, no session"
        );
    }

    #[test]
    fn the_idlest_session_makes_room_for_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(dir.path());
        let sessions = Sessions::new(&config(2));
        let (first, _) = sessions.open(Principal::local(), None).unwrap();
        let (second, _) = sessions.open(Principal::local(), None).unwrap();
        assert!(sessions.find(&first, &keys).is_some(), "first used last");
        let (third, _) = sessions.open(Principal::local(), None).unwrap();
        assert!(sessions.find(&second, &keys).is_none());
        assert!(sessions.find(&first, &keys).is_some() && sessions.find(&third, &keys).is_some());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; jm_session=abc; b=2"),
        );
        assert_eq!(cookie_token(&headers), Some("abc"));
        let cookie = set_cookie("abc", Duration::from_secs(60));
        let cookie = cookie.to_str().unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    }
}
