//! The outermost HTTP layer: each request runs inside a `rest` span carrying its route and, when
//! the route names one, its thing id (so every log line of the request shows which thing it
//! was about), and its duration is recorded by route template (axum's `MatchedPath`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use super::AppState;
use crate::metrics::UNMATCHED_ROUTE;

/// Route parameters that hold a thing id.
const THING_PARAMS: [&str; 2] = ["{id}", "{thing}"];

/// Wraps the request in its span and times it. `MatchedPath` is known here because
/// `Router::layer` wraps each route (after routing), not the router as a whole.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let thing = route
        .as_deref()
        .and_then(|r| thing_in(r, req.uri().path()))
        .map(str::to_owned);
    let span = tracing::info_span!(
        "rest",
        method = %req.method(),
        route = route.as_deref().unwrap_or(UNMATCHED_ROUTE),
        thing_id = thing.as_deref(),
    );
    let resp = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let label = route
        .as_deref()
        .map_or_else(|| UNMATCHED_ROUTE.to_owned(), route_label);
    state.metrics.observe_http_request(&label, elapsed);
    span.in_scope(|| {
        tracing::debug!(
            status = resp.status().as_u16(),
            micros = elapsed.as_micros() as u64,
            "answered"
        );
    });
    resp
}

/// A route template as a metric label: `/things/{id}` becomes `/things/:id`. Braces are valid
/// in label values, but several Prometheus text parsers in use cut a label set at the first `}`.
fn route_label(template: &str) -> String {
    template.replace('{', ":").replace('}', "")
}

/// The thing id in `path` where `route` has a thing parameter. Only `/things/{id}...` routes
/// and OTA task routes name a thing (`/ota/jobs/{id}` names a job).
fn thing_in<'a>(route: &str, path: &'a str) -> Option<&'a str> {
    let mut previous = "";
    for (template, actual) in route.split('/').zip(path.split('/')) {
        if THING_PARAMS.contains(&template) && matches!(previous, "things" | "tasks") {
            return Some(actual);
        }
        previous = template;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{route_label, thing_in};

    #[test]
    fn route_labels_have_no_braces() {
        assert_eq!(
            route_label("/api/v1/things/{id}/shadows/{name}"),
            "/api/v1/things/:id/shadows/:name"
        );
    }

    #[test]
    fn finds_the_thing_parameter() {
        assert_eq!(
            thing_in(
                "/api/v1/things/{id}/shadows/{name}",
                "/api/v1/things/t1/shadows/s"
            ),
            Some("t1")
        );
        assert_eq!(
            thing_in(
                "/api/v1/ota/jobs/{id}/tasks/{thing}",
                "/api/v1/ota/jobs/j/tasks/t2"
            ),
            Some("t2")
        );
        assert_eq!(
            thing_in("/api/v1/ota/jobs/{id}", "/api/v1/ota/jobs/j"),
            None
        );
        assert_eq!(thing_in("/api/v1/things", "/api/v1/things"), None);
    }
}
