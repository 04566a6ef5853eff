//! The web console (docs/spec.md D-39): server-rendered pages at `/` and `/console/...`, served by
//! the REST API's axum server and driving the same services (never the REST API over HTTP).
//!
//! - Sign-in ([`session`]): the admin token, once, for a random session id in a cookie
//!   (`HttpOnly`, `SameSite=Strict`; `Secure` behind an HTTPS proxy). Every write is a POST form
//!   carrying the session's CSRF token, checked in constant time.
//! - Pages, one file each: [`things`] (list, search by S-9.4 query, create, enable, disable,
//!   delete), [`thing`] (shadows, desired state, methods, event stream), [`ota`] (jobs:
//!   list, create, progress, cancel), [`metrics`] (live charts).
//! - Live updates ([`events`]): a [`Bus`](crate::bus::Bus) wrapper tees presence, lifecycle and
//!   shadow publications into a bounded broadcast channel, streamed as server-sent events. The
//!   markup of a changed shadow is rendered here and sent whole, so the script only swaps nodes.
//! - Assets (one stylesheet, one script, no CDN) are compiled into the binary; a strict
//!   Content-Security-Policy forbids inline scripts and any other origin.

pub mod events;
pub mod login;
pub mod metrics;
pub mod ota;
pub mod session;
pub mod sync;
pub mod thing;
pub mod things;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::api::{ApiError, AppState};
use crate::shadow::ShadowError;
use crate::things::ThingsError;

pub use events::{ConsoleEvents, TeeBus};
pub use session::{Sessions, SignedIn};

/// What the console keeps: its sessions and its view of hub events. Cheap to clone.
#[derive(Clone, Default)]
pub struct Console {
    /// Signed-in browsers.
    pub sessions: Sessions,
    /// Live events (empty unless the hub's bus is wrapped in a [`TeeBus`]).
    pub events: ConsoleEvents,
}

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");
/// Pages may load only their own stylesheet and script, and talk only to their own origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes, merged into the REST API's router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(things::page))
        .route("/console/login", get(login::page).post(login::sign_in))
        .route("/console/logout", post(login::sign_out))
        .route("/console/things", post(things::create))
        .route("/console/things/{id}", get(thing::page))
        .route("/console/things/{id}/enabled", post(things::set_enabled))
        .route("/console/things/{id}/delete", post(things::delete))
        .route("/console/things/{id}/desired", post(thing::set_desired))
        .route("/console/things/{id}/method", post(thing::call_method))
        .route("/console/events", get(events::stream))
        .route("/console/ota", get(ota::page))
        .route("/console/ota/open", get(ota::open))
        .route("/console/ota/jobs", post(ota::create))
        .route("/console/ota/jobs/{id}", get(ota::job_page))
        .route("/console/ota/jobs/{id}/cancel", post(ota::cancel))
        .route("/console/metrics", get(metrics::page))
        .route("/console/sync", get(sync::page))
        .route("/console/metrics/sample", get(metrics::sample))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A whole page: title, navigation, `body`; `live` pages open the event stream, filtered to
/// `thing` when given.
pub(crate) fn layout(
    title: &str,
    signed: Option<&SignedIn>,
    live: Option<&str>,
    body: Markup,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · iothub" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body data-live=[live.map(|_| "1")] data-thing=[live.filter(|t| !t.is_empty())] {
                header {
                    a.brand href="/" { "iothub" }
                    @if let Some(s) = signed {
                        nav {
                            a href="/" { "Things" }
                            a href="/console/ota" { "OTA jobs" }
                            a href="/console/metrics" { "Metrics" }
                            a href="/console/sync" { "Sync" }
                            form.inline method="post" action="/console/logout" {
                                (s.csrf_field())
                                button #sign-out type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    };
    html_response(StatusCode::OK, markup)
}

/// An HTML answer with the console's security headers.
pub(crate) fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, markup).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// A failed page: its status and message, as HTML (never the JSON envelope).
#[derive(Debug)]
pub struct PageError(pub ApiError);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let markup = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { "Error · iothub" }
                    link rel="stylesheet" href="/console/assets/console.css";
                }
                body {
                    main {
                        h1 { "Error " (self.0.status.as_u16()) }
                        p.error #error { (self.0.message) }
                        p { a href="/" { "Back to the things" } }
                    }
                }
            }
        };
        html_response(self.0.status, markup)
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl From<ThingsError> for PageError {
    fn from(e: ThingsError) -> Self {
        PageError(e.into())
    }
}

impl From<ShadowError> for PageError {
    fn from(e: ShadowError) -> Self {
        PageError(e.into())
    }
}

/// A message shown above a page after a write: what happened, or the error and its code.
pub(crate) enum Notice {
    Done(String),
    Failed(ApiError),
}

impl Notice {
    pub(crate) fn render(&self) -> Markup {
        match self {
            Notice::Done(m) => html! { p.notice.ok #notice { (m) } },
            Notice::Failed(e) => html! {
                p.notice.error #notice { "Error " (e.status.as_u16()) ": " (e.message) }
            },
        }
    }
}

pub(crate) use crate::clock::format_utc as format_ms;

#[cfg(test)]
mod tests {
    use super::format_ms;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00");
        assert_eq!(format_ms(1_709_210_096_000), "2024-02-29 12:34:56");
    }
}
