//! The sign-in page: the admin token for a session cookie; and signing out.

use std::time::Instant;

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::session::{COOKIE, cookie, set_cookie, via_https};
use super::{SignedIn, html_response, layout};
use crate::api::AppState;
use crate::auth::constant_time_eq;

/// The sign-in form.
#[derive(Deserialize)]
pub struct SignInForm {
    token: String,
}

/// The sign-out form.
#[derive(Deserialize)]
pub struct SignOutForm {
    /// Missing is refused like a wrong token (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
}

fn form(error: Option<&str>) -> maud::Markup {
    html! {
        h1 { "Sign in" }
        @if let Some(e) = error { p.notice.error #notice { (e) } }
        form method="post" action="/console/login" {
            label for="token" { "Admin token" }
            input #token type="password" name="token" autocomplete="current-password" required autofocus;
            button #sign-in type="submit" { "Sign in" }
        }
        p.hint { "The token given to " code { "iothub serve --admin-token" } " or printed at its start." }
    }
}

/// `GET /console/login`.
pub async fn page() -> Response {
    layout("Sign in", None, None, form(None))
}

/// `POST /console/login`: a right token opens a session and goes to the things list.
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<SignInForm>,
) -> Response {
    let token = state.admin_token.as_bytes();
    if token.is_empty() || !constant_time_eq(f.token.trim().as_bytes(), token) {
        tracing::info!("console sign-in refused");
        let mut resp = layout("Sign in", None, None, form(Some("Wrong token.")));
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        return resp;
    }
    let (id, _csrf) = state.console.sessions.open(Instant::now());
    tracing::info!("console sign-in");
    (
        [(
            header::SET_COOKIE,
            set_cookie(Some(&id), via_https(&headers)),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

/// `POST /console/logout`: ends the session (with its CSRF token, so no other site can).
pub async fn sign_out(
    State(state): State<AppState>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(f): Form<SignOutForm>,
) -> Response {
    if !signed.csrf_ok(&f.csrf) {
        return csrf_refused();
    }
    if let Some(id) = cookie(&headers, COOKIE) {
        state.console.sessions.close(id);
    }
    (
        [(header::SET_COOKIE, set_cookie(None, via_https(&headers)))],
        Redirect::to("/console/login"),
    )
        .into_response()
}

/// The answer to a form without this session's CSRF token.
pub(crate) fn csrf_refused() -> Response {
    html_response(
        StatusCode::FORBIDDEN,
        html! { p.error #error { "Missing or wrong CSRF token: reload the page and try again." } },
    )
}
