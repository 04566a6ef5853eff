//! Console sessions: a random id in a cookie, mapped in memory to its CSRF token and expiry.
//!
//! The admin token itself never sits in the browser: signing in trades it for a session id. The
//! table is bounded ([`MAX_SESSIONS`]; the oldest session goes first) and every session ends after
//! [`SESSION_TTL`]. A restart signs everyone out, which a development hub can afford.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use crate::api::AppState;
use crate::auth::{constant_time_eq, generate_secret};

/// Name of the session cookie.
pub const COOKIE: &str = "iothub_console";
/// Most sessions at once; signing in beyond that ends the oldest.
pub const MAX_SESSIONS: usize = 64;
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The session table. Cheap to clone.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, Session>>>,
}

struct Session {
    csrf: String,
    expires: Instant,
}

impl Sessions {
    /// Opens a session; returns its id (for the cookie) and its CSRF token.
    pub fn open(&self, now: Instant) -> (String, String) {
        let id = generate_secret();
        let csrf = generate_secret();
        let mut map = self.lock();
        map.retain(|_, s| s.expires > now);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        (id, csrf)
    }

    /// The CSRF token of a live session.
    pub fn csrf(&self, id: &str, now: Instant) -> Option<String> {
        let map = self.lock();
        map.get(id)
            .filter(|s| s.expires > now)
            .map(|s| s.csrf.clone())
    }

    /// Ends a session.
    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// How many sessions are in the table (expired ones included until the next sign-in).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves a consistent map (every change is one call).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A signed-in request: extracting it sends anyone else to the sign-in page.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The session id.
    pub session: String,
    /// The session's CSRF token, put into every form.
    pub csrf: String,
}

impl SignedIn {
    /// The hidden form field carrying the CSRF token.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }

    /// Whether a submitted form's token is this session's.
    pub fn csrf_ok(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.csrf.as_bytes())
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let found = cookie(&parts.headers, COOKIE).and_then(|id| {
            state
                .console
                .sessions
                .csrf(id, Instant::now())
                .map(|csrf| SignedIn {
                    session: id.to_owned(),
                    csrf,
                })
        });
        found.ok_or_else(|| Redirect::to("/console/login").into_response())
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for a session (`None` clears the cookie). `secure` when the browser
/// reached the hub over HTTPS (through a proxy: the hub itself serves plain HTTP).
pub fn set_cookie(session: Option<&str>, secure: bool) -> String {
    let (value, age) = match session {
        Some(id) => (id, SESSION_TTL.as_secs()),
        None => ("", 0),
    };
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={age}{secure}")
}

/// Whether the request came through an HTTPS proxy.
pub fn via_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_bounded_and_keeps_the_newest() {
        let sessions = Sessions::default();
        let start = Instant::now();
        let first = sessions.open(start).0;
        let mut last = String::new();
        for i in 1..=MAX_SESSIONS as u64 {
            last = sessions.open(start + Duration::from_secs(i)).0;
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions.csrf(&first, start).is_none(), "oldest evicted");
        assert!(sessions.csrf(&last, start).is_some());
    }

    #[test]
    fn sessions_expire_and_close() {
        let sessions = Sessions::default();
        let start = Instant::now();
        let (id, csrf) = sessions.open(start);
        assert_eq!(sessions.csrf(&id, start).as_deref(), Some(csrf.as_str()));
        assert!(sessions.csrf(&id, start + SESSION_TTL).is_none());
        sessions.close(&id);
        assert!(sessions.is_empty());
    }

    #[test]
    fn cookies_are_found_and_flagged() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; iothub_console=xyz; b=2"
                .parse()
                .expect("header value"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        let set = set_cookie(Some("xyz"), true);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(set.ends_with("; Secure"));
        assert!(!set_cookie(None, false).contains("Secure"));
    }
}
