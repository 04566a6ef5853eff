//! Swagger UI at `/api/docs`, over the hub's own `/api/v1/openapi.json`.
//!
//! The files are the npm package `swagger-ui-dist` committed under `hub/assets/swagger-ui/`
//! (with its Apache-2.0 licence) and built into the binary, so neither the build nor the page
//! downloads anything. That is lighter than `utoipa-swagger-ui`: without its `vendored` feature
//! its build script downloads a zip from GitHub, and with it the build compiles a zip reader
//! and `rust-embed` to unpack the same files at build time; here it is four `include_bytes!`.
//!
//! Like the OpenAPI document, the page needs no token: it describes the API and discloses
//! nothing; calls made from it carry the bearer token given in its "Authorize" dialog.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;

/// The page, and each asset it loads: (path under `/api/docs`, content type, bytes).
const ASSETS: [(&str, &str, &[u8]); 3] = [
    (
        "/swagger-ui.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/swagger-ui/swagger-ui.css"),
    ),
    (
        "/swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js"),
    ),
    (
        "/swagger-initializer.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/swagger-ui/swagger-initializer.js"),
    ),
];

const INDEX: &[u8] = include_bytes!("../../assets/swagger-ui/index.html");

/// The routes under `/api/docs` (no token).
pub fn routes() -> Router<AppState> {
    let mut r = Router::new()
        .route("/api/docs", get(index))
        .route(
            "/api/docs/",
            get(|| async { Redirect::permanent("/api/docs") }),
        )
        .route("/api/docs/index.html", get(index));
    for (path, content_type, bytes) in ASSETS {
        r = r.route(
            &format!("/api/docs{path}"),
            get(move || async move { asset(content_type, bytes) }),
        );
    }
    r
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
        .into_response()
}

fn asset(content_type: &'static str, bytes: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The bytes change only with the binary; a day keeps a reload after an upgrade sane.
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        bytes,
    )
        .into_response()
}
