//! Provisioning over MQTT (S-10): trade an enrollment's claim secret for a thing's own
//! credentials, once, on first boot. The application keeps what [`provision`] returns and
//! connects with [`crate::ThingOptions::new`] from then on.

use std::time::Duration;

use iothub_spec::limits::Limits;
use iothub_spec::payload::{ErrorResponse, ProvisionAccepted, ProvisionRequest, ProvisionSettings};
use iothub_spec::topic::provision::{Claim, ProvisionKind};
use rumqttc::{AsyncClient, ConnAck, ConnectReturnCode, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use crate::error::{ConnectError, Error, Result};

/// What to provision with: the hub's address, the enrollment, the device's serial and the
/// claim secret (S-10.1), and optionally a requested thing id and attributes (S-10.2).
#[derive(Clone)]
pub struct ProvisionOptions {
    host: String,
    port: u16,
    enrollment: String,
    serial: String,
    claim_secret: String,
    thing_id: Option<String>,
    attributes: Option<Value>,
    timeout: Duration,
}

impl std::fmt::Debug for ProvisionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the claim secret.
        f.debug_struct("ProvisionOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("enrollment", &self.enrollment)
            .field("serial", &self.serial)
            .field("thing_id", &self.thing_id)
            .finish_non_exhaustive()
    }
}

impl ProvisionOptions {
    /// Provisioning under `enrollment` as `serial` with `claim_secret`, at `host:port` (plain
    /// MQTT 3.1.1), with a 10 s timeout for the whole exchange.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        enrollment: impl Into<String>,
        serial: impl Into<String>,
        claim_secret: impl Into<String>,
    ) -> Self {
        ProvisionOptions {
            host: host.into(),
            port,
            enrollment: enrollment.into(),
            serial: serial.into(),
            claim_secret: claim_secret.into(),
            thing_id: None,
            attributes: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// The thing id to ask for (the enrollment's id rule decides, D-44).
    pub fn thing_id(mut self, id: impl Into<String>) -> Self {
        self.thing_id = Some(id.into());
        self
    }

    /// Attributes the hub keeps in the thing's tags (a JSON object).
    pub fn attributes(mut self, attributes: Value) -> Self {
        self.attributes = Some(attributes);
        self
    }

    /// How long the whole exchange may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A thing's own credentials, shown once by the hub: keep them.
#[derive(Clone)]
pub struct Provisioned {
    /// The thing's id.
    pub thing_id: String,
    /// The thing's secret.
    pub password: String,
    /// The limits the hub enforces.
    pub limits: Limits,
}

impl std::fmt::Debug for Provisioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioned")
            .field("thing_id", &self.thing_id)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Connects as the claim `$claim/{enrollment}/{serial}`, asks to be provisioned and returns the
/// thing's credentials. A refusal is [`Error::Rejected`] with its S-10.5 code (403 with
/// "enrollment exhausted", "enrollment expired" or "enrollment disabled"; 409 id taken; 503
/// retry later); a wrong claim secret is [`Error::Refused`].
pub async fn provision(options: &ProvisionOptions) -> Result<Provisioned> {
    let claim = Claim::parse_parts(&options.enrollment, &options.serial)
        .ok_or(Error::InvalidArgument("enrollment or serial"))?;
    let user = claim.to_string();
    let mut mqtt = MqttOptions::new(&user, &options.host, options.port);
    mqtt.set_credentials(&user, &options.claim_secret)
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(mqtt, 8);
    let accepted = claim.topic(ProvisionKind::Accepted).to_string();
    let rejected = claim.topic(ProvisionKind::Rejected).to_string();
    let token = client_token();
    let request = serde_json::to_vec(&ProvisionRequest {
        client_token: &token,
        thing_id: options.thing_id.as_deref(),
        serial: None,
        attributes: options.attributes.clone(),
    })?;
    let exchange = async {
        loop {
            let event = events.poll().await.map_err(|e| match e {
                rumqttc::ConnectionError::ConnectionRefused(code) => {
                    Error::Refused(format!("{code:?}"))
                }
                other => Error::Connect(ConnectError::Protocol(other.to_string())),
            })?;
            match event {
                Event::Incoming(Packet::ConnAck(ConnAck { code, .. })) => {
                    if code != ConnectReturnCode::Success {
                        return Err(Error::Refused(format!("{code:?}")));
                    }
                    // Subscriptions go first: the reply must find them.
                    let _ = client.subscribe(&accepted, QoS::AtLeastOnce).await;
                    let _ = client.subscribe(&rejected, QoS::AtLeastOnce).await;
                    let request = client.publish(
                        claim.topic(ProvisionKind::Request).to_string(),
                        QoS::AtLeastOnce,
                        false,
                        request.clone(),
                    );
                    request
                        .await
                        .map_err(|e| Error::Connect(ConnectError::Protocol(e.to_string())))?;
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == accepted => {
                    let body: ProvisionAccepted<'_, ProvisionSettings> =
                        serde_json::from_slice(&p.payload)?;
                    if body.client_token == token {
                        return Ok(Provisioned {
                            thing_id: body.thing_id.to_owned(),
                            password: body.password.to_owned(),
                            limits: body.settings.limits,
                        });
                    }
                }
                Event::Incoming(Packet::Publish(p)) if p.topic == rejected => {
                    let body: ErrorResponse<'_> = serde_json::from_slice(&p.payload)?;
                    if body.client_token.is_none_or(|t| t == token) {
                        return Err(Error::Rejected {
                            code: body.code,
                            message: body.message.to_owned(),
                        });
                    }
                }
                _ => {}
            }
        }
    };
    let result = tokio::time::timeout(options.timeout, exchange)
        .await
        .unwrap_or(Err(Error::Timeout(options.timeout)));
    // The hub closes the claim connection after its reply (D-43); say goodbye first anyway.
    let _ = client.try_disconnect();
    result
}

/// A token unique enough to match this request's reply.
fn client_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("prov-{}-{nanos}", std::process::id())
}
