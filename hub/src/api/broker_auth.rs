//! `POST /api/v1/broker/authn` and `POST /api/v1/broker/authz` (D-57): the hub as the HTTP
//! authenticator and authorizer of a broker it does not run, in EMQX 5's formats.
//!
//! An authentication request is decided by [`Events::authenticate`], the same function that
//! decides a CONNECT on the embedded broker (S-1.2, S-1.3, S-1.5, D-33); an authorization
//! request by [`may_publish`] and [`may_subscribe`], the allow-list functions the embedded
//! broker's hooks call (S-2.1, D-35). So a device is let in and held to its topics alike behind
//! either broker.
//!
//! The broker calls these routes, not a person: they take their own bearer token
//! (`--broker-auth-token`, compared in constant time) instead of the admin token, and exist only
//! when it is set (otherwise they are unknown routes, 404). Their answers are EMQX's bodies,
//! not the S-9.1 envelope (EMQX reads `result` at the top level); errors keep the envelope, and
//! EMQX takes any status but 200 and 204 as `ignore`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use iothub_spec::ids::is_service_user;
use iothub_spec::topic::acl::{may_publish, may_subscribe, split_shared};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson};
use super::schema::NullEnvelope;
use crate::edge::{Admission, Client, Connect, Events};

/// Largest request body. EMQX sends a few short strings: a thing's secret is at most 256 bytes
/// (`crate::things::MAX_PASSWORD_LEN`), a topic of this contract at most 256 bytes (D-7), so
/// this leaves room for JSON escapes and the fields the hub ignores.
pub const MAX_BROKER_BODY: usize = 16 * 1024;

/// What the broker routes need: their token and the core's CONNECT decision.
#[derive(Clone)]
pub struct BrokerAuth {
    token: Arc<str>,
    events: Arc<dyn Events>,
}

impl BrokerAuth {
    /// Serves the routes behind `token`, deciding CONNECTs with `events` (the hub's
    /// [`HubEvents`](crate::edge::HubEvents), the embedded broker's own).
    pub fn new(token: impl Into<Arc<str>>, events: Arc<dyn Events>) -> BrokerAuth {
        BrokerAuth {
            token: token.into(),
            events,
        }
    }
}

/// The two routes, at their full paths, with their token check and body limit.
pub fn routes(auth: BrokerAuth) -> Router<AppState> {
    Router::new()
        .route("/api/v1/broker/authn", post(authn))
        .route("/api/v1/broker/authz", post(authz))
        .route_layer(middleware::from_fn_with_state(auth.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_BROKER_BODY))
        .with_state(auth)
}

/// Checks `Authorization: Bearer <broker auth token>` in constant time.
async fn require_token(State(auth): State<BrokerAuth>, req: Request, next: Next) -> Response {
    if super::admin_ok(req.headers(), &auth.token, false) {
        return next.run(req).await;
    }
    let mut resp =
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token").into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

/// EMQX 5's HTTP authentication request, as the body template of D-57 renders it. Other
/// fields are ignored.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct AuthnRequest {
    /// The MQTT client identifier (`${clientid}`).
    pub clientid: String,
    /// The MQTT user name (`${username}`); empty when the CONNECT carried none.
    pub username: String,
    /// The password (`${password}`).
    pub password: String,
    /// The client's IP address (`${peerhost}`), for the refusal log.
    #[schema(value_type = Option<String>)]
    pub peerhost: Option<IpAddr>,
}

/// EMQX 5's HTTP authorization request (D-57). Other fields (`qos`, `retain`, ...) are ignored:
/// the allow-list does not depend on them.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct AuthzRequest {
    /// The MQTT client identifier (`${clientid}`).
    pub clientid: String,
    /// The MQTT user name (`${username}`).
    pub username: String,
    /// The topic of a publish or the filter of a subscribe (`${topic}`), `$share/{group}/`
    /// included when the broker passes it.
    pub topic: String,
    /// `publish` or `subscribe` (`${action}`).
    pub action: Action,
}

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Publish on `topic` (a Will's topic too, when the broker asks before publishing it).
    Publish,
    /// Subscribe to the filter `topic`.
    Subscribe,
}

/// The decision. The hub never answers EMQX's third value, `ignore`: a name it does not know
/// is refused, as AWS IoT and Azure IoT Hub refuse one (D-57).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Let it connect, publish or subscribe.
    Allow,
    /// Refuse it.
    Deny,
}

/// The answer to an authentication request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct AuthnResponse {
    /// `allow` or `deny`.
    pub result: Verdict,
    /// Always `false`: a superuser would skip the allow-list, and service users keep to
    /// `$iothub/...` (S-1.5) through the authorization route like everyone else.
    pub is_superuser: bool,
}

/// The answer to an authorization request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct AuthzResponse {
    /// `allow` or `deny`.
    pub result: Verdict,
}

/// Decides a CONNECT a broker asks about (S-1.2, S-1.3, S-1.5, D-33, D-57).
#[utoipa::path(post, path = "/api/v1/broker/authn", operation_id = "brokerAuthenticate", tag = "broker",
    request_body = AuthnRequest,
    responses(
        (status = 200, description = "The decision, in EMQX 5's format (not enveloped)", body = AuthnResponse),
        (status = 400, description = "Not JSON, or a field missing or of the wrong type", body = NullEnvelope),
        (status = 401, description = "Missing or wrong broker auth token", body = NullEnvelope),
        (status = 404, description = "--broker-auth-token is not set", body = NullEnvelope),
        (status = 413, description = "Body over 16 KiB", body = NullEnvelope),
    ),
    security(("broker" = [])))]
pub async fn authn(
    State(auth): State<BrokerAuth>,
    ApiJson(req): ApiJson<AuthnRequest>,
) -> Response {
    let admission = auth.events.authenticate(&connect_of(&req)).await;
    let result = if admission == Admission::Allow {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    json(AuthnResponse {
        result,
        is_superuser: false,
    })
}

/// Decides a publish or subscribe a broker asks about (S-2.1, D-35, D-57).
#[utoipa::path(post, path = "/api/v1/broker/authz", operation_id = "brokerAuthorize", tag = "broker",
    request_body = AuthzRequest,
    responses(
        (status = 200, description = "The decision, in EMQX 5's format (not enveloped)", body = AuthzResponse),
        (status = 400, description = "Not JSON, a field missing or of the wrong type, or an action other than publish and subscribe", body = NullEnvelope),
        (status = 401, description = "Missing or wrong broker auth token", body = NullEnvelope),
        (status = 404, description = "--broker-auth-token is not set", body = NullEnvelope),
        (status = 413, description = "Body over 16 KiB", body = NullEnvelope),
    ),
    security(("broker" = [])))]
pub async fn authz(ApiJson(req): ApiJson<AuthzRequest>) -> Response {
    let allowed = authorize(&req);
    if !allowed {
        tracing::debug!(username = %req.username, topic = %req.topic, action = ?req.action, "broker authorization denied by the allow-list");
    }
    json(AuthzResponse {
        result: if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
    })
}

/// The CONNECT the embedded broker would have handed the core. No Will: EMQX does not send
/// it, and asks the authorization route for a Will's topic before publishing it. `crowded`,
/// so a refusal is answered at once (see [`Connect::crowded`]).
fn connect_of(req: &AuthnRequest) -> Connect<'_> {
    Connect {
        client: Client {
            client_id: &req.clientid,
            username: &req.username,
            remote_addr: req.peerhost.map(|ip| SocketAddr::new(ip, 0)),
        },
        has_username: !req.username.is_empty(),
        password: req.password.as_bytes(),
        will_topic: None,
        // EMQX does not forward the client certificate (D-82: no certificate identity there).
        cert_sha256: None,
        crowded: true,
    }
}

/// The allow-list decision, with the embedded broker's functions. A thing's or claim's client
/// identifier must be its user name (S-1.2, D-43), as at CONNECT: it always is for a client
/// the hub authenticated, and a client another authenticator of the broker let in under
/// someone else's name gets nothing.
pub fn authorize(req: &AuthzRequest) -> bool {
    if !is_service_user(&req.username) && req.clientid != req.username {
        return false;
    }
    match req.action {
        Action::Publish => may_publish(&req.username, &req.topic),
        Action::Subscribe => {
            let (filter, shared) = split_shared(&req.topic);
            may_subscribe(&req.username, filter, shared)
        }
    }
}

/// A 200 answer with `body` as plain JSON (EMQX requires `application/json`).
fn json<T: Serialize>(body: T) -> Response {
    match serde_json::to_vec(&body) {
        Ok(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz_req(username: &str, clientid: &str, action: Action, topic: &str) -> AuthzRequest {
        AuthzRequest {
            clientid: clientid.to_owned(),
            username: username.to_owned(),
            topic: topic.to_owned(),
            action,
        }
    }

    fn allowed(username: &str, action: Action, topic: &str) -> bool {
        authorize(&authz_req(username, username, action, topic))
    }

    #[test]
    fn things_keep_to_their_own_topics() {
        use Action::{Publish, Subscribe};
        let update = "$iothub/things/t1/shadows/name/default/update";
        assert!(allowed("t1", Publish, update));
        assert!(
            allowed("t1", Subscribe, update),
            "any filter below its own T (D-8)"
        );
        assert!(allowed("t1", Subscribe, "$iothub/things/t1/#"));
        assert!(!allowed("t1", Publish, "$iothub/things/t1/#"));
        assert!(!allowed(
            "t1",
            Publish,
            "$iothub/things/t2/shadows/name/default/update"
        ));
        assert!(!allowed("t1", Subscribe, "$iothub/things/t2/#"));
        assert!(!allowed("t1", Subscribe, "$iothub/things/+/#"));
        assert!(!allowed("t1", Publish, "other/topic"));
        assert!(!allowed("t1", Subscribe, "#"));
        // D-35: never shared, whether the broker strips `$share/{group}/` or passes it.
        assert!(!allowed("t1", Subscribe, "$share/g/$iothub/things/t1/#"));
    }

    #[test]
    fn the_client_id_must_be_the_user_name_except_for_service_users() {
        let update = "$iothub/things/t1/shadows/name/default/update";
        assert!(!authorize(&authz_req("t1", "t2", Action::Publish, update)));
        assert!(!authorize(&authz_req("", "", Action::Publish, update)));
        assert!(authorize(&authz_req(
            "$backend",
            "backend-7",
            Action::Publish,
            update
        )));
        assert!(authorize(&authz_req(
            "$backend",
            "backend-7",
            Action::Subscribe,
            "$share/workers/$iothub/things/+/messages/property"
        )));
        assert!(!authorize(&authz_req(
            "$backend",
            "backend-7",
            Action::Subscribe,
            "#"
        )));
    }

    #[test]
    fn a_connect_is_asked_as_the_embedded_broker_asks_it() {
        let req = AuthnRequest {
            clientid: "c".into(),
            username: String::new(),
            password: "pw".into(),
            peerhost: Some("10.0.0.7".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
        };
        let connect = connect_of(&req);
        assert!(!connect.has_username, "an empty user name is none");
        assert_eq!(connect.client.client_id, "c");
        assert_eq!(connect.password, b"pw");
        assert_eq!(
            connect.client.remote_addr.map(|a| a.ip().to_string()),
            Some("10.0.0.7".to_owned())
        );
        assert!(connect.will_topic.is_none());
        assert!(connect.crowded, "refusals are never held back");
    }

    #[test]
    fn bodies_are_emqx_shaped() {
        let allow = serde_json::to_value(AuthnResponse {
            result: Verdict::Allow,
            is_superuser: false,
        });
        assert_eq!(
            allow.ok(),
            Some(serde_json::json!({"result": "allow", "is_superuser": false}))
        );
        let deny = serde_json::to_value(AuthzResponse {
            result: Verdict::Deny,
        });
        assert_eq!(deny.ok(), Some(serde_json::json!({"result": "deny"})));
        let req: Result<AuthzRequest, _> = serde_json::from_value(serde_json::json!({
            "clientid": "t1", "username": "t1", "topic": "x", "action": "subscribe", "qos": "1"
        }));
        assert_eq!(req.map(|r| r.action).ok(), Some(Action::Subscribe));
        let bad: Result<AuthzRequest, _> = serde_json::from_value(serde_json::json!({
            "clientid": "t1", "username": "t1", "topic": "x", "action": "all"
        }));
        assert!(bad.is_err(), "only publish and subscribe");
    }
}
