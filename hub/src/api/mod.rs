//! The REST API (S-9): axum routes under `/api/v1`, plus `/healthz` and `/metrics`; the same
//! server also serves the web console at `/` and `/console/...` ([`crate::console`]).
//!
//! Every body is the S-9.1 envelope `{"code","message","data"}` with `code` equal to the HTTP
//! status, errors included: bad JSON and wrong field types (400), missing or wrong bearer token
//! (401), unknown routes (404), wrong HTTP method (405), bodies over the limit (413). The
//! exceptions are `/metrics`, which speaks the Prometheus text format, and the answers of
//! [`broker_auth`] (200 in EMQX 5's own format; its errors are enveloped).
//!
//! Every `/api/v1` route, `limits` included, needs `Authorization: Bearer <admin token>`. Open
//! (no token): `/healthz` and `/metrics` (probes and scrapers carry no token), and the API's
//! description, `GET /api/v1/openapi.json` and Swagger UI at `/api/docs` ([`docs`]): they
//! describe the API and disclose nothing. With `--tio-compat` the admin routes also accept
//! HTTP Basic auth whose password is the admin token (tio's clients send Basic auth; see
//! `docs/tio-compatibility.md`). The broker's routes, `/api/v1/broker/authn` and `/authz`
//! ([`broker_auth`], D-57), take their own token, `--broker-auth-token`, and exist only when it
//! is set.
//!
//! One file per resource: [`things`] (registry and tags), [`certificates`] (a thing's client
//! certificates, D-82), [`shadows`], [`query`], [`methods`],
//! [`ota`] (OTA jobs), [`system`] (health, metrics, limits, OpenAPI), [`docs`] (Swagger UI),
//! [`tio`] (the routes and names tio's clients use, as aliases), [`broker_auth`] (a broker's
//! HTTP authentication and authorization), [`sync`] (registry sync, S-13).
//!
//! # Decisions
//! Where S-9 is silent, the routes follow docs/spec.md D-6 (the envelope and the API's own
//! errors), D-24 (OTA job shapes, in [`ota`]), D-25 (creating things, batches), D-26 (paging),
//! D-27 (tags), D-28 (enabling and disabling), D-29 (method calls), D-30 (identifiers in paths),
//! D-31 (the OpenAPI document and the open routes), D-32 (the query language, in
//! [`crate::query`]), D-36 (REST shadow writes), D-42 (tags merge-patch) and D-83 (a thing's
//! client certificates, in [`certificates`]).

pub mod broker_auth;
pub mod certificates;
pub mod configurations;
pub mod docs;
pub mod enrollments;
pub mod error;
pub mod jobs;
pub mod methods;
pub mod observe;
pub mod ota;
pub mod query;
pub mod routes;
pub mod schema;
pub mod scopes;
pub mod serve;
pub mod shadows;
pub mod sync;
pub mod system;
pub mod things;
pub mod tio;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use iothub_spec::limits::Limits;

use crate::method::Methods;
use crate::metrics::Metrics;
use crate::shadow::ShadowService;
use crate::store::SharedStore;

pub use error::{ApiError, ApiJson, ApiPath, ApiQuery, envelope};

/// Largest request body on most routes.
pub const MAX_BODY: usize = 1024 * 1024;
/// Largest request body of `POST /things/batch` (up to 1000 things with tags).
pub const MAX_BATCH_BODY: usize = 8 * 1024 * 1024;

/// What every handler needs. Cheap to clone (every field is shared).
#[derive(Clone)]
pub struct AppState {
    /// The store (read paths such as existence checks).
    pub store: SharedStore,
    /// The shadow pipeline (S-9.3 shadow routes).
    pub shadows: ShadowService,
    /// Direct methods (S-9.5).
    pub methods: Methods,
    /// The registry service (S-9.2, tags, query).
    pub things: crate::things::Things,
    /// The configured limits (reported by `GET /api/v1/limits`).
    pub limits: Limits,
    /// The admin bearer token.
    pub admin_token: Arc<str>,
    /// Tokens with a narrower scope (D-58), `--api-token`.
    pub scoped_tokens: Arc<[(scopes::Scope, Arc<str>)]>,
    /// Hub metrics.
    pub metrics: Arc<Metrics>,
    /// OTA jobs (S-9.6); `None` answers their routes with 503.
    pub ota: Option<crate::ota::OtaService>,
    /// Configurations (S-11); `None` answers their routes with 503.
    pub configurations: Option<crate::configurations::Configurations>,
    /// Fleet jobs (S-12); `None` answers their routes with 503.
    pub jobs: Option<crate::jobs::Jobs>,
    /// Routes to other systems (S-14); `None` answers their API with 503.
    pub routes: Option<crate::routes::Routes>,
    /// `--tio-compat`: HTTP Basic auth with the admin token as password is accepted too.
    pub basic_auth: bool,
    /// The web console's sessions and live events (`crate::console`).
    pub console: crate::console::Console,
    /// Provisioning (S-10); `None` answers the enrollment routes with 503.
    pub provisioner: Option<crate::provision::Provisioner>,
    /// The partitions of things this instance handles (D-73), shown by `/healthz`.
    pub ownership: Arc<crate::cluster::Ownership>,
    /// The broker's HTTP authentication and authorization (D-57); `None`: no such routes.
    pub broker_auth: Option<broker_auth::BrokerAuth>,
    /// Registry sync (S-13), when configured (`GET /sync` shows it).
    pub sync: Option<crate::sync::SyncHandle>,
}

impl AppState {
    /// Bundles the services the API drives.
    pub fn new(
        store: SharedStore,
        shadows: ShadowService,
        methods: Methods,
        things: crate::things::Things,
        limits: Limits,
        admin_token: impl Into<Arc<str>>,
        metrics: Arc<Metrics>,
    ) -> AppState {
        AppState {
            store,
            shadows,
            methods,
            things,
            limits,
            admin_token: admin_token.into(),
            scoped_tokens: Arc::from([]),
            metrics,
            ota: None,
            configurations: None,
            jobs: None,
            routes: None,
            basic_auth: false,
            console: crate::console::Console::default(),
            provisioner: None,
            ownership: crate::cluster::Ownership::everything(),
            broker_auth: None,
            sync: None,
        }
    }

    /// Shows the registry sync `sync` (S-13) on `GET /api/v1/sync`.
    pub fn with_sync(mut self, sync: Option<crate::sync::SyncHandle>) -> AppState {
        self.sync = sync;
        self
    }

    /// Accepts `tokens`, each for its scope's routes only (D-58).
    pub fn with_scoped_tokens(mut self, tokens: &[(scopes::Scope, String)]) -> AppState {
        self.scoped_tokens = tokens
            .iter()
            .map(|(scope, token)| (*scope, Arc::from(token.as_str())))
            .collect();
        self
    }

    /// Shows the partitions of `ownership` on `/healthz` (one of several instances, D-73).
    pub fn with_ownership(mut self, ownership: Arc<crate::cluster::Ownership>) -> AppState {
        self.ownership = ownership;
        self
    }

    /// Serves `POST /api/v1/broker/authn` and `/authz` (D-57) with `auth`.
    pub fn with_broker_auth(mut self, auth: broker_auth::BrokerAuth) -> AppState {
        self.broker_auth = Some(auth);
        self
    }

    /// Serves the enrollment routes (S-10, D-46) with `provisioner`.
    pub fn with_provisioner(mut self, provisioner: crate::provision::Provisioner) -> AppState {
        self.provisioner = Some(provisioner);
        self
    }

    /// Serves the OTA job routes (S-9.6) with `ota`.
    pub fn with_ota(mut self, ota: crate::ota::OtaService) -> AppState {
        self.ota = Some(ota);
        self
    }

    /// Serves the configuration routes (S-11) with `configurations`.
    pub fn with_configurations(
        mut self,
        configurations: crate::configurations::Configurations,
    ) -> AppState {
        self.configurations = Some(configurations);
        self
    }

    /// Serves the routes' API (S-14) and message history with `routes`.
    pub fn with_routes(mut self, routes: crate::routes::Routes) -> AppState {
        self.routes = Some(routes);
        self
    }

    /// Serves the fleet job routes (S-12) with `jobs`.
    pub fn with_jobs(mut self, jobs: crate::jobs::Jobs) -> AppState {
        self.jobs = Some(jobs);
        self
    }

    /// Streams `events` (from the [`TeeBus`](crate::console::TeeBus) around the hub's bus) to
    /// console pages.
    pub fn with_console_events(mut self, events: crate::console::ConsoleEvents) -> AppState {
        self.console.events = events;
        self
    }

    /// Also accepts HTTP Basic auth (any user name, the admin token as password), as tio's
    /// clients send it. Off by default: a browser that once sent Basic credentials attaches
    /// them to every later request to the hub by itself, which a bearer token never is.
    pub fn with_basic_auth(mut self, on: bool) -> AppState {
        self.basic_auth = on;
        self
    }
}

/// The whole HTTP application: `/api/v1/...` (bearer token), `/healthz`, `/metrics`.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/things", post(things::create).get(things::list))
        .route(
            "/things/batch",
            post(things::create_batch).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)),
        )
        .route("/things/query", post(query::query))
        .route(
            "/things/{id}",
            get(things::get_thing)
                .patch(things::patch)
                .delete(things::delete),
        )
        .route(
            "/things/{id}/tags",
            put(things::put_tags).patch(things::patch_tags),
        )
        .route(
            "/things/{id}/shadows/{name}",
            get(shadows::get_shadow).delete(shadows::delete_shadow),
        )
        .route(
            "/things/{id}/shadows/{name}/state/desired",
            put(shadows::put_desired),
        )
        .route("/things/{id}/methods/{method}", post(methods::invoke))
        .route(
            "/things/{id}/certificates",
            post(certificates::register).get(certificates::list),
        )
        .route(
            "/things/{id}/certificates/{fingerprint}",
            delete(certificates::revoke),
        )
        .route("/ota/jobs", post(ota::create))
        .route("/ota/jobs/{id}", get(ota::get_job))
        .route("/ota/jobs/{id}/cancel", post(ota::cancel))
        .route("/ota/jobs/{id}/tasks", get(ota::list_tasks))
        .route("/ota/jobs/{id}/tasks/{thing}", get(ota::get_task))
        .route(
            "/ota/jobs/{id}/tasks/{thing}/cancel",
            post(ota::cancel_task),
        )
        .route("/limits", get(system::limits))
        .route(
            "/enrollments",
            post(enrollments::create).get(enrollments::list),
        )
        .route(
            "/enrollments/{id}",
            get(enrollments::get_one)
                .patch(enrollments::patch)
                .delete(enrollments::delete),
        )
        .route(
            "/configurations",
            get(configurations::list).post(configurations::create),
        )
        .route(
            "/configurations/{name}",
            get(configurations::get)
                .put(configurations::replace)
                .delete(configurations::delete),
        )
        .route(
            "/things/{id}/configurations",
            get(configurations::thing_records),
        )
        .route("/jobs", post(jobs::create).get(jobs::list))
        .route("/jobs/{id}", get(jobs::get_job))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/things", get(jobs::list_things))
        .route("/jobs/{id}/things/{thing}", get(jobs::get_thing))
        .route("/sync", get(sync::status))
        .route("/sync/events", get(sync::events))
        .route("/routes", post(routes::create).get(routes::list))
        .route(
            "/routes/{id}",
            get(routes::get_route)
                .put(routes::replace)
                .delete(routes::delete),
        )
        .route("/routes/{id}/pause", post(routes::pause))
        .route("/routes/{id}/resume", post(routes::resume))
        .route("/routes/{id}/dead-letters", get(routes::dead_letters))
        .route("/routes/{id}/dead-letters/replay", post(routes::replay))
        .route("/things/{id}/messages", get(routes::history))
        .merge(tio::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));

    let mut app = Router::new()
        .nest("/api/v1", v1)
        .route("/api/v1/openapi.json", get(system::openapi))
        .merge(docs::routes())
        .merge(crate::console::routes())
        .route("/healthz", get(system::healthz))
        .route("/metrics", get(system::metrics));
    // Without their token the broker's routes do not exist: 404 like any unknown path. Merged
    // before the layers below, which wrap only the routes present when they are added.
    if let Some(auth) = state.broker_auth.clone() {
        app = app.merge(broker_auth::routes(auth));
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            envelope_and_count,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// Checks `Authorization: Bearer <token>` (or, with `--tio-compat`, `Basic`) against the admin
/// token and the scoped tokens in constant time: 401 for no known token, 403 for a token whose
/// scope does not cover the route (D-58).
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let scope = if admin_ok(req.headers(), &state.admin_token, state.basic_auth) {
        Some(scopes::Scope::Admin)
    } else {
        // Every token is compared, so the time taken does not tell which one came close.
        state
            .scoped_tokens
            .iter()
            .filter(|(_, token)| admin_ok(req.headers(), token, false))
            .map(|(scope, _)| *scope)
            .fold(None, |found, scope| found.or(Some(scope)))
    };
    let Some(scope) = scope else {
        let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token")
            .into_response();
        // Never a Basic challenge: it would make browsers prompt and then cache the secret.
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return resp;
    };
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if scopes::allows(scope, req.method(), &route) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("a {} token may not {} {route}", scope.name(), req.method()),
        )
        .into_response()
    }
}

/// Whether `headers` carry `token` as a bearer token (or, when `basic`, as a Basic password),
/// compared in constant time; an empty `token` admits no one. Also checks the broker's token
/// ([`broker_auth`], never Basic).
fn admin_ok(headers: &HeaderMap, token: &str, basic: bool) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    if token.is_empty() {
        return false;
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        return crate::auth::constant_time_eq(given.trim().as_bytes(), token.as_bytes());
    }
    if basic && scheme.eq_ignore_ascii_case("basic") {
        return basic_password(given.trim())
            .is_some_and(|p| crate::auth::constant_time_eq(&p, token.as_bytes()));
    }
    false
}

/// The password of a Basic credential `base64(user:password)`; the user name is not checked.
fn basic_password(encoded: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// Outermost layer: counts every answer by status class, and wraps any error that is not yet
/// an envelope (a rejection from a layer, such as a body limit) into one.
async fn envelope_and_count(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    state.metrics.inc_rest_request(status.as_u16());
    let is_own_body = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct.starts_with("text/html"));
    // Console pages (HTML) carry their own error page.
    if (status.is_client_error() || status.is_server_error()) && !is_own_body {
        let mut wrapped = ApiError::from_status(status).into_response();
        if let Some(v) = resp.headers().get(header::WWW_AUTHENTICATE) {
            wrapped
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, v.clone());
        }
        return wrapped;
    }
    resp
}

#[cfg(test)]
mod tests;
