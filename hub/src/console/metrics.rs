//! The metrics page (`/console/metrics`): live charts of connected things, the shadow update
//! rate and its latency percentiles, and the method round trip, drawn by the console's own
//! script (inline SVG, no other origin) from `/console/metrics/sample`, which it polls.
//!
//! The sample is the hub's counters and cumulative histogram buckets as they are
//! ([`Metrics::chart_sample`](crate::metrics::Metrics::chart_sample)); rates and percentiles are
//! differences between two samples, so the charts show the last interval, not the whole run.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::{SignedIn, layout};
use crate::api::AppState;
use crate::metrics::ChartSample;

/// Milliseconds between two samples of the page (the script reads it from the page).
pub const POLL_MS: u64 = 2000;
/// Samples each chart keeps (two minutes at [`POLL_MS`]).
pub const POINTS: u64 = 60;

/// `GET /console/metrics`.
pub async fn page(signed: SignedIn) -> Response {
    let body = html! {
        h1 { "Metrics" }
        p.hint { "Sampled every " (POLL_MS / 1000) " s from the hub's own counters; the "
            a href="/metrics" { "Prometheus text" } " has every metric." }
        div #charts.charts data-poll-ms=(POLL_MS) data-points=(POINTS) {
            (chart("connected", "Connected things", "things"))
            (chart("rate", "Shadow updates accepted and MQTT messages in", "per second"))
            (chart("update-latency", "Shadow update processing (p50, p90, p99)", "ms"))
            (chart("method-latency", "Method round trip (p50, p90, p99)", "ms"))
        }
    };
    layout("Metrics", Some(&signed), None, body)
}

fn chart(id: &str, title: &str, unit: &str) -> Markup {
    html! {
        figure.chart {
            figcaption { (title) " " small { "(" (unit) ")" } " " span.last id=(format!("last-{id}")) {} }
            svg id=(format!("chart-{id}")) viewBox="0 0 600 160" preserveAspectRatio="none"
                role="img" aria-label=(title) {}
        }
    }
}

/// `GET /console/metrics/sample`: the figures the charts plot, now.
pub async fn sample(_signed: SignedIn, State(state): State<AppState>) -> Response {
    let sample: ChartSample = state.metrics.chart_sample();
    let mut resp = Json(sample).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
