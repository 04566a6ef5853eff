//! The hub's rmqtt hook handlers: authentication, allow-lists, presence and request hand-off.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iothub_spec::ids::is_service_user;
use iothub_spec::topic::{Topic, thing_may_subscribe};
use rmqtt::acl::AuthInfo;
use rmqtt::codec::types::MQTT_LEVEL_5;
use rmqtt::codec::v5::{PublishAckReason, SubscribeAckReason};
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::session::Session;
use rmqtt::types::{
    AuthResult, ConnectInfo, LastWill, Publish, PublishAclResult, PublishResult, Subscribe,
    SubscribeReturn,
};

use super::HookDeps;
use super::authn::CredentialCheck;
use crate::clock::now_ms;
use crate::guard::limiter::ConnLimiter;
use crate::router::Inbound;

/// Every `$iothub/...` topic and filter belongs to the hub's namespace (S-1.5).
const SERVICE_NAMESPACE: &str = "$iothub/";

/// Registers once per hook type; all share one [`HubHooks`].
pub(super) struct SharedHooks(pub Arc<HubHooks>);

#[async_trait]
impl Handler for SharedHooks {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        self.0.hook(param, acc).await
    }
}

pub(super) struct HubHooks {
    deps: HookDeps,
    scx: ServerContext,
    /// The listener's unauthenticated-connection slots (a failed CONNECT holds one while its
    /// refusal is delayed).
    pending: ConnLimiter,
}

impl HubHooks {
    pub(super) fn new(deps: HookDeps, scx: ServerContext, pending: ConnLimiter) -> Self {
        HubHooks { deps, scx, pending }
    }

    async fn hook(&self, param: &Parameter<'_>, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => {
                let result = self.authenticate(info).await;
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let result = self.subscribe_acl(session, subscribe).await;
                (false, Some(HookResult::SubscribeAclResult(result)))
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let result = self.publish_acl(session, publish).await;
                (false, Some(HookResult::PublishAclResult(result)))
            }
            Parameter::ClientConnected(session) => {
                self.deps.presence.connected(session).await;
                self.resumed(session).await;
                (true, acc)
            }
            Parameter::SessionSubscribed(session, subscribe) => {
                self.subscribed(session, subscribe).await;
                (true, acc)
            }
            Parameter::ClientDisconnected(session, reason) => {
                self.deps
                    .presence
                    .disconnected(session, &reason.to_string())
                    .await;
                (true, acc)
            }
            _ => (true, acc),
        }
    }

    /// Authenticates a CONNECT and, when it fails, holds the refusal back by the failure
    /// backoff of its address and name, and counts it for the summarized refusal log.
    async fn authenticate(&self, info: &ConnectInfo) -> AuthResult {
        let (result, blame) = self.check_credentials(info).await;
        let name = info.username().map_or("", |u| u.as_ref());
        if matches!(result, AuthResult::Allow(..)) {
            self.deps.authenticator.succeeded(name);
            return result;
        }
        let addr = info.id().remote_addr.map(|a| a.ip());
        self.deps.refusals.record(addr, blame.reason());
        if blame == Blame::Client {
            let mut delay = self.deps.authenticator.failed(addr, name);
            if self.pending.crowded() {
                // A delayed refusal holds an unauthenticated slot for the whole delay. From many
                // addresses at once, delayed refusals alone would fill those slots and shut out
                // every legitimate device at accept (issue 14), so while half of them are held
                // refusals go out at once; guessing stays bounded by the verification queue.
                delay = Duration::ZERO;
            }
            tracing::debug!(thing = %name, ?addr, delay_ms = delay.as_millis() as u64, "CONNECT refused");
            tokio::time::sleep(delay).await;
        }
        result
    }

    /// S-1.2, S-1.3: client identifier = username = thingId, password = the thing's secret.
    async fn check_credentials(&self, info: &ConnectInfo) -> (AuthResult, Blame) {
        let Some(username) = info.username() else {
            return (AuthResult::BadUsernameOrPassword, Blame::Client);
        };
        let password = info.password().map(|p| p.as_ref()).unwrap_or_default();
        let username: &str = username.as_ref();
        if is_service_user(username) {
            return match self
                .deps
                .authenticator
                .check_service_user(username, password)
            {
                true => {
                    // Business back ends reconnect at once with the same client id, like things.
                    super::takeover::settle_previous_session(&self.scx, info).await;
                    (AuthResult::Allow(false, None::<AuthInfo>), Blame::None)
                }
                false => (AuthResult::BadUsernameOrPassword, Blame::Client),
            };
        }
        let client_id: &str = info.client_id().as_ref();
        if client_id != username {
            tracing::debug!(%client_id, %username, "refused: client id differs from username");
            return (AuthResult::BadUsernameOrPassword, Blame::Client);
        }
        if let Some(will_topic) = will_topic(info)
            && !Topic::parse(will_topic).is_ok_and(|t| t.thing_may_publish(username))
        {
            // The broker publishes a Will without asking the ACL hooks, so the allow-list
            // (S-2.1: `T/messages/will/#` and the thing's other own topics) is applied here.
            tracing::debug!(thing = %username, %will_topic, "refused: Will topic outside the allow-list");
            return (AuthResult::NotAuthorized, Blame::Client);
        }
        match self
            .deps
            .authenticator
            .check_thing(username, password)
            .await
        {
            CredentialCheck::Valid => {
                super::takeover::settle_previous_session(&self.scx, info).await;
                (AuthResult::Allow(false, None), Blame::None)
            }
            CredentialCheck::Invalid => (AuthResult::BadUsernameOrPassword, Blame::Client),
            CredentialCheck::Disabled => (AuthResult::NotAuthorized, Blame::Client),
            CredentialCheck::Unavailable => (AuthResult::NotAuthorized, Blame::Hub),
            CredentialCheck::Busy => (AuthResult::NotAuthorized, Blame::Busy),
        }
    }

    /// A thing's subscription that covers its `T/ota/task` makes it ready for OTA tasks (S-7.3):
    /// only now can a task published to it arrive.
    async fn subscribed(&self, session: &Session, subscribe: &Subscribe) {
        let thing = session.id.username_ref();
        if is_service_user(thing) {
            return;
        }
        let ota_topic = Topic::OtaTask { thing }.to_string();
        let covers = rmqtt::topic::Topic::from_str(subscribe.topic_filter.as_ref())
            .is_ok_and(|f| f.matches_str(&ota_topic));
        if covers {
            self.deps.ota.thing_ready(thing).await;
        }
    }

    /// A thing that resumes its session (MQTT 5 Clean Start 0 with a live session, MQTT 3.1.1
    /// Clean Session 0) sends no SUBSCRIBE: its subscriptions come back with the session, which
    /// rmqtt restores only after this hook returns. Watch for them (bounded), so that queued
    /// OTA tasks go out as they do after a SUBSCRIBE (S-7.3).
    async fn resumed(&self, session: &Session) {
        let thing = session.id.username_ref();
        if is_service_user(thing) || !session.session_present().await.unwrap_or(false) {
            return;
        }
        let (session, ota, thing) = (session.clone(), self.deps.ota.clone(), thing.to_owned());
        tokio::spawn(async move {
            let ota_topic = Topic::OtaTask { thing: &thing }.to_string();
            let deadline = tokio::time::Instant::now() + RESUME_WATCH;
            while tokio::time::Instant::now() < deadline {
                if let Ok(subs) = session.subscriptions().await {
                    let subs = subs.read().await;
                    if !subs.is_empty() {
                        let covers = subs.keys().any(|filter| {
                            rmqtt::topic::Topic::from_str(filter.as_ref())
                                .is_ok_and(|f| f.matches_str(&ota_topic))
                        });
                        drop(subs);
                        if covers {
                            ota.thing_ready(&thing).await;
                        }
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    /// S-2.1 publish allow-list; S-2.2 denial. Allowed requests go to the router from here, the
    /// only place where the allow-list decision is known.
    async fn publish_acl(&self, session: &Session, publish: &Publish) -> PublishAclResult {
        let received_at = now_ms();
        let sender = session.id.username_ref();
        let topic: &str = publish.topic.as_ref();
        let allowed = if is_service_user(sender) {
            topic.starts_with(SERVICE_NAMESPACE)
        } else {
            Topic::parse(topic).is_ok_and(|t| t.thing_may_publish(sender))
        };
        if !allowed {
            tracing::debug!(%sender, %topic, "publish denied by the allow-list");
            let mqtt5 = session.protocol().await.unwrap_or_default() == MQTT_LEVEL_5;
            // MQTT 5 answers PUBACK 0x87; MQTT 3.1.1 has no way to say no but closing. No
            // Reason String: rmqtt's default ("PublishRefused") makes the PUBACK longer than
            // the 4 bytes some clients read, and the code alone says it all (MQTT 5 §3.4.2.2.2
            // makes the string optional).
            return PublishAclResult(PublishResult::reason_code(
                PublishAckReason::NotAuthorized,
                None,
                !mqtt5,
            ));
        }
        if publish.retain && self.retain_quota_reached(topic, publish).await {
            tracing::debug!(%sender, %topic, "retained publish over the per-thing quota");
            let mqtt5 = session.protocol().await.unwrap_or_default() == MQTT_LEVEL_5;
            // S-2.4: MQTT 5 answers PUBACK 0x97; MQTT 3.1.1 can only close, as for S-2.2.
            return PublishAclResult(PublishResult::reason_code(
                PublishAckReason::QuotaExceeded,
                None,
                !mqtt5,
            ));
        }
        self.deps
            .router
            .offer(Inbound {
                sender: sender.into(),
                topic: topic.into(),
                payload: publish.payload.clone(),
                received_at,
            })
            .await;
        PublishAclResult::allow()
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

/// How long a resumed session's subscriptions are awaited (they arrive within milliseconds).
const RESUME_WATCH: Duration = Duration::from_secs(2);

impl HubHooks {
    /// S-2.4: a retained message that would be one more than the thing may keep.
    async fn retain_quota_reached(&self, topic: &str, publish: &Publish) -> bool {
        let Some(filter) = super::retain::user_space_filter(topic) else {
            return false;
        };
        let existing: Vec<_> = match self.scx.extends.retain().await.get(&filter).await {
            Ok(found) => found.into_iter().map(|(name, _)| name).collect(),
            Err(e) => {
                tracing::warn!(%topic, error = %e, "retained store unreadable");
                return true;
            }
        };
        super::retain::would_exceed_cap(topic, publish.payload.is_empty(), &existing)
    }
}

fn will_topic(info: &ConnectInfo) -> Option<&str> {
    match info.last_will()? {
        LastWill::V3(will) => Some(will.topic.as_ref()),
        LastWill::V5(will) => Some(will.topic.as_ref()),
    }
}

impl HubHooks {
    /// S-2.1 subscribe allow-list (S-2.2: 0x80 in 3.1.1, 0x87 in MQTT 5), then the cap on a
    /// thing's subscriptions (0x97 in MQTT 5, 0x80 in 3.1.1).
    async fn subscribe_acl(&self, session: &Session, subscribe: &Subscribe) -> SubscribeReturn {
        let sender = session.id.username_ref();
        let filter: &str = subscribe.topic_filter.as_ref();
        let service_user = is_service_user(sender);
        let allowed = if service_user {
            filter.starts_with(SERVICE_NAMESPACE)
        } else {
            // With `$share/{group}/` already stripped from `filter` by rmqtt. Shared
            // subscriptions are for back ends that split a stream (MQTT 5 §4.8.2); a thing keeps
            // the plain allow-list of S-2.1.
            !subscribe.opts.has_shared_group() && thing_may_subscribe(filter, sender)
        };
        if !allowed {
            tracing::debug!(%sender, %filter, "subscribe denied by the allow-list");
            return SubscribeReturn::new_failure(SubscribeAckReason::NotAuthorized);
        }
        if !service_user && self.over_subscription_cap(session, filter).await {
            tracing::debug!(%sender, %filter, max = self.deps.max_subscriptions, "subscribe refused: subscription cap");
            return SubscribeReturn::new_failure(SubscribeAckReason::QuotaExceeded);
        }
        SubscribeReturn::new_success(subscribe.opts.qos(), None)
    }

    /// Whether subscribing `filter` would take the session past the cap. Re-subscribing a
    /// filter it already holds replaces that subscription (MQTT 3.8.4) and adds none. rmqtt
    /// handles a SUBSCRIBE's filters one after the other, so the count includes the earlier
    /// filters of the same packet.
    async fn over_subscription_cap(&self, session: &Session, filter: &str) -> bool {
        let Ok(subs) = session.subscriptions().await else {
            return false;
        };
        if subs.len().await < self.deps.max_subscriptions {
            return false;
        }
        !subs
            .to_topic_filters()
            .await
            .iter()
            .any(|held| AsRef::<str>::as_ref(held) == filter)
    }
}
