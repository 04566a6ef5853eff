//! The hub side's preflight: before any case, check that the hub answers on both addresses and
//! accepts the admin token, and read its version. A hub that fails here would fail every case
//! for the same reason, so the run stops with one line naming it (exit status 2) instead.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::api::Api;
use crate::mqtt::{Conn, ConnectError, ConnectOpts, Proto};
use crate::net::MqttTarget;

/// Time limit of each preflight step.
const STEP: Duration = Duration::from_secs(5);

/// Why the hub cannot be tested.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// No HTTP answer from the REST address.
    #[error("the hub's REST API at {0} does not answer: {1}")]
    ApiUnreachable(String, String),
    /// The admin token is refused.
    #[error("the hub at {0} refuses the admin token (HTTP {1} on GET /api/v1/things)")]
    TokenRefused(String, u16),
    /// Another answer than a page of things.
    #[error("the hub at {0} answers GET /api/v1/things with HTTP {1}, not 200")]
    ApiBroken(String, u16),
    /// No MQTT server at the MQTT address.
    #[error("the hub's MQTT address {0} does not answer a CONNECT: {1}")]
    MqttUnreachable(String, String),
    /// `--tls`: the TLS handshake fails (no TLS listener there, a certificate the CA file does
    /// not vouch for, a client certificate the hub refuses, ..).
    #[error("the hub's MQTT address {0} fails the TLS handshake: {1}")]
    TlsHandshake(String, String),
}

/// What the preflight learned.
#[derive(Debug, Clone)]
pub struct Preflight {
    /// The hub's version as its OpenAPI document states it (`None`: not stated).
    pub hub_version: Option<String>,
}

/// Checks the hub at `mqtt` and `api`.
pub async fn hub(mqtt: &MqttTarget, api: &Api) -> Result<Preflight, PreflightError> {
    let base = api.base().to_owned();
    // Reachable at all (no token: the document is public).
    let doc = api
        .send(Method::GET, "/api/v1/openapi.json", None, false, STEP)
        .await
        .map_err(|e| PreflightError::ApiUnreachable(base.clone(), format!("{e:#}")))?;
    let hub_version = doc
        .body
        .pointer("/info/version")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let status = api
        .status_of("/api/v1/things?pageIndex=0&pageSize=1", true, STEP)
        .await
        .map_err(|e| PreflightError::ApiUnreachable(base.clone(), format!("{e:#}")))?;
    match status {
        200 => {}
        401 | 403 => return Err(PreflightError::TokenRefused(base, status)),
        s => return Err(PreflightError::ApiBroken(base, s)),
    }
    // An MQTT server answers a CONNECT with unknown credentials by a CONNACK refusal (S-1.3);
    // an accepted one would do as well. Only no CONNACK at all fails.
    let addr = mqtt.url();
    if mqtt.tls().is_some() {
        // rumqttc reports a failed handshake as a connect error among others; a handshake of
        // its own names the cause.
        match tokio::time::timeout(STEP, mqtt.open()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(PreflightError::TlsHandshake(addr, format!("{e:#}"))),
            Err(_) => {
                return Err(PreflightError::TlsHandshake(
                    addr,
                    "no handshake within 5 s".into(),
                ));
            }
        }
    }
    let opts = ConnectOpts {
        client_id: format!("cf-preflight-{}", crate::ctx::rand_u32()),
        username: "cf-preflight".into(),
        password: "not-a-secret".into(),
        will: None,
        pre_subscribe: Vec::new(),
    };
    match tokio::time::timeout(STEP, Conn::connect(mqtt, Proto::V311, opts)).await {
        Ok(Ok(conn)) => drop(conn),
        Ok(Err(ConnectError::Refused(_))) => {}
        Ok(Err(ConnectError::Other(e))) => return Err(PreflightError::MqttUnreachable(addr, e)),
        Err(_) => {
            return Err(PreflightError::MqttUnreachable(
                addr,
                "no CONNACK within 5 s".into(),
            ));
        }
    }
    Ok(Preflight { hub_version })
}
