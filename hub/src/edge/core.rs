//! The hub core's side of the broker boundary: what each broker event means for the registry,
//! presence, OTA and the request router.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iothub_spec::ids::{is_claim_user, is_service_user};
use iothub_spec::topic::acl::may_set_will;
use iothub_spec::topic::provision::Claim;
use iothub_spec::topic::{Topic, filter_matches};

use super::authn::{Authenticator, CredentialCheck};
use super::{Acceptance, Admission, Client, Connect, Events, PublishIn};
use crate::guard::refusals::RefusalLog;
use crate::metrics::Metrics;
use crate::ota::OtaService;
use crate::presence::Presence;
use crate::provision::Provisioner;
use crate::router::{Inbound, RouterHandle};

/// The hub's [`Events`]: authentication with failure backoff, presence, OTA readiness and the
/// hand-off of device requests to the router.
pub struct HubEvents {
    authenticator: Authenticator,
    presence: Presence,
    router: RouterHandle,
    ota: OtaService,
    metrics: Arc<Metrics>,
    refusals: Arc<RefusalLog>,
    provisioner: Option<Provisioner>,
    routes: Option<crate::routes::Routes>,
    /// Whether the broker holds the PUBACK back for [`Acceptance`] (the embedded one does;
    /// an external one has acknowledged before the hub hears of the message, D-79).
    gated: bool,
}

impl HubEvents {
    /// The core's event handler over its services.
    pub fn new(
        authenticator: Authenticator,
        presence: Presence,
        router: RouterHandle,
        ota: OtaService,
        metrics: Arc<Metrics>,
        refusals: Arc<RefusalLog>,
    ) -> HubEvents {
        HubEvents {
            authenticator,
            presence,
            router,
            ota,
            metrics,
            refusals,
            provisioner: None,
            routes: None,
            gated: true,
        }
    }

    /// Offers devices' telemetry, application messages and results to `routes` before they are
    /// acknowledged (S-14, D-78). `gated`: the broker acknowledges by the answer; when it does
    /// not (D-79), a message the routes refused is still handled.
    pub fn with_routes(mut self, routes: crate::routes::Routes, gated: bool) -> HubEvents {
        self.routes = Some(routes);
        self.gated = gated;
        self
    }

    /// Serves provisioning requests of claim connections (S-10) with `provisioner`; without
    /// one, claim connections are refused at CONNECT.
    pub fn with_provisioner(mut self, provisioner: Provisioner) -> HubEvents {
        self.provisioner = Some(provisioner);
        self
    }

    /// S-10.1, D-43: client identifier = user name = `$claim/{enrollment}/{serial}`, password =
    /// the enrollment's claim secret, no Will.
    async fn check_claim(&self, connect: &Connect<'_>) -> (Admission, Blame) {
        let username = connect.client.username;
        let claim = Claim::parse(username).filter(|_| self.provisioner.is_some());
        let Some(claim) = claim.filter(|_| connect.client.client_id == username) else {
            return (Admission::BadCredentials, Blame::Client);
        };
        if connect.will_topic.is_some() {
            return (Admission::NotAuthorized, Blame::Client);
        }
        match self
            .authenticator
            .check_claim(claim.enrollment, connect.password)
            .await
        {
            CredentialCheck::Valid => (Admission::Allow, Blame::None),
            CredentialCheck::Invalid | CredentialCheck::Disabled => {
                (Admission::BadCredentials, Blame::Client)
            }
            CredentialCheck::Unavailable => (Admission::NotAuthorized, Blame::Hub),
            CredentialCheck::Busy => (Admission::NotAuthorized, Blame::Busy),
        }
    }

    /// S-1.2, S-1.3, S-1.5, D-33: client identifier = user name = thingId, password = the
    /// thing's secret; service users against the configuration.
    async fn check(&self, connect: &Connect<'_>) -> (Admission, Blame) {
        let username = connect.client.username;
        if !connect.has_username {
            return (Admission::BadCredentials, Blame::Client);
        }
        if is_claim_user(username) {
            return self.check_claim(connect).await;
        }
        if is_service_user(username) {
            return match self
                .authenticator
                .check_service_user(username, connect.password)
            {
                true => (Admission::Allow, Blame::None),
                false => (Admission::BadCredentials, Blame::Client),
            };
        }
        if connect.client.client_id != username {
            tracing::debug!(client_id = %connect.client.client_id, %username, "refused: client id differs from username");
            return (Admission::BadCredentials, Blame::Client);
        }
        if let Some(will_topic) = connect.will_topic
            && !may_set_will(username, will_topic)
        {
            tracing::debug!(thing = %username, %will_topic, "refused: Will topic outside the allow-list");
            return (Admission::NotAuthorized, Blame::Client);
        }
        // D-82: a client certificate registered on this thing authenticates it, whatever the
        // password; any other certificate leaves the decision to the secret.
        if let Some(sha256) = &connect.cert_sha256 {
            match self.authenticator.check_certificate(username, sha256).await {
                CredentialCheck::Valid => return (Admission::Allow, Blame::None),
                CredentialCheck::Disabled => return (Admission::NotAuthorized, Blame::Client),
                CredentialCheck::Unavailable => return (Admission::NotAuthorized, Blame::Hub),
                CredentialCheck::Invalid | CredentialCheck::Busy => {}
            }
        }
        match self
            .authenticator
            .check_thing(username, connect.password)
            .await
        {
            CredentialCheck::Valid => (Admission::Allow, Blame::None),
            CredentialCheck::Invalid => (Admission::BadCredentials, Blame::Client),
            CredentialCheck::Disabled => (Admission::NotAuthorized, Blame::Client),
            CredentialCheck::Unavailable => (Admission::NotAuthorized, Blame::Hub),
            CredentialCheck::Busy => (Admission::NotAuthorized, Blame::Busy),
        }
    }
}

#[async_trait]
impl Events for HubEvents {
    /// Authenticates a CONNECT and, when it fails, holds the refusal back by the failure backoff
    /// of its address and name, and counts it for the summarized refusal log.
    async fn authenticate(&self, connect: &Connect<'_>) -> Admission {
        let (admission, blame) = self.check(connect).await;
        let name = connect.client.username;
        if admission == Admission::Allow {
            self.authenticator.succeeded(name);
            return admission;
        }
        let addr = connect.client.remote_addr.map(|a| a.ip());
        self.refusals.record(addr, blame.reason());
        if blame == Blame::Client {
            let mut delay = self.authenticator.failed(addr, name);
            if connect.crowded {
                // A delayed refusal holds an unauthenticated slot for the whole delay. From many
                // addresses at once, delayed refusals alone would fill those slots and shut out
                // every legitimate device at accept (issue 14), so while half of them are held
                // refusals go out at once; guessing stays bounded by the verification queue.
                delay = Duration::ZERO;
            }
            tracing::debug!(thing = %name, ?addr, delay_ms = delay.as_millis() as u64, "CONNECT refused");
            tokio::time::sleep(delay).await;
        }
        admission
    }

    async fn connected(&self, client: &Client<'_>, replaced: bool) {
        // Claim connections are no things: no presence (S-10.3).
        if !is_service_user(client.username) && !is_claim_user(client.username) {
            self.presence.connected(client, replaced).await;
        }
    }

    async fn disconnected(&self, client: &Client<'_>, reason: &str, current: bool) {
        if !is_service_user(client.username) && !is_claim_user(client.username) {
            self.presence.disconnected(client, reason, current).await;
        }
    }

    /// A thing's subscription that covers its `T/ota/task` makes it ready for OTA tasks (S-7.3):
    /// only now can a task published to it arrive.
    async fn subscribed(&self, client: &Client<'_>, filter: &str) {
        let thing = client.username;
        if is_service_user(thing) || is_claim_user(thing) {
            return;
        }
        let ota_topic = Topic::OtaTask { thing }.to_string();
        if filter_matches(filter, &ota_topic) {
            self.ota.thing_ready(thing).await;
        }
    }

    async fn publish_in(&self, message: PublishIn<'_>) -> Acceptance {
        self.metrics.inc_mqtt_messages_in();
        // A claim connection's only allowed publish is its provisioning request (S-10.3).
        if is_claim_user(message.sender) {
            if let Some(provisioner) = &self.provisioner {
                provisioner.request(message.sender, message.topic, message.payload.clone());
            }
            return Acceptance::Accepted;
        }
        let parsed = Topic::parse(message.topic).ok();
        // Into the routes' outboxes first: a message they cannot take is refused, and a
        // refused request is not handled either (the device will send it again).
        if let (Some(routes), Some(topic), true) = (&self.routes, parsed, message.route)
            && let Some(source) = route_source(&topic)
        {
            let verdict = routes
                .offer(
                    source,
                    topic.thing(),
                    message.topic,
                    message.payload,
                    message.received_at,
                )
                .await;
            if verdict != Acceptance::Accepted {
                if self.gated {
                    return verdict;
                }
                tracing::warn!(topic = %message.topic, ?verdict, "message refused by the routes after the broker acknowledged it (D-79)");
            }
        }
        // Only requests reach the router; telemetry, Wills and user topics are plain MQTT.
        let Some(thing) = parsed.filter(Topic::is_hub_request).map(|t| t.thing()) else {
            return Acceptance::Accepted;
        };
        // A request belongs to the thing its topic names (a service user may speak for any);
        // that thing's shard keeps its requests in order.
        self.router
            .offer(
                thing,
                Inbound {
                    sender: message.sender.to_owned(),
                    topic: message.topic.to_owned(),
                    payload: message.payload.clone(),
                    received_at: message.received_at,
                },
            )
            .await;
        Acceptance::Accepted
    }
}

/// The route source of a device's PUBLISH, if routes may take it (S-14.2).
fn route_source(topic: &Topic<'_>) -> Option<crate::routes::Source> {
    use crate::routes::Source;
    match topic {
        Topic::Property { .. } => Some(Source::Telemetry),
        Topic::User { .. } => Some(Source::Messages),
        Topic::OtaTaskResult { .. } => Some(Source::OtaResults),
        Topic::MethodResponse { .. } => Some(Source::MethodResults),
        _ => None,
    }
}

/// Whose fault a refused CONNECT is; only the client's own failures back off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// Not refused.
    None,
    /// Wrong or unusable credentials.
    Client,
    /// The registry could not be read.
    Hub,
    /// Too many password verifications waiting (a flood); not counted against the client.
    Busy,
}

impl Blame {
    fn reason(self) -> &'static str {
        match self {
            Blame::None => "accepted",
            Blame::Client => "bad credentials",
            Blame::Hub => "registry unavailable",
            Blame::Busy => "busy",
        }
    }
}
