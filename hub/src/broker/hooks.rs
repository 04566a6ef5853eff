//! The rmqtt hook handlers: rmqtt's events translated to the broker boundary
//! ([`crate::edge::Events`]), the allow-lists decided by [`iothub_spec::topic::acl`], and what
//! only this broker needs (its takeover, its retained-message and subscription quotas).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iothub_spec::ids::is_service_user;
use iothub_spec::topic::acl::{may_publish, may_subscribe};
use rmqtt::acl::AuthInfo;
use rmqtt::codec::types::MQTT_LEVEL_5;
use rmqtt::codec::v5::{PublishAckReason, SubscribeAckReason};
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};
use rmqtt::session::Session;
use rmqtt::types::{
    AuthResult, ConnectInfo, Id, LastWill, Publish, PublishAclResult, PublishResult, Subscribe,
    SubscribeReturn,
};

use super::Live;
use crate::clock::now_ms;
use crate::edge::{Acceptance, Admission, Client, Connect, Events, PublishIn};
use crate::guard::limiter::ConnLimiter;

/// Registers once per hook type; all share one [`HubHooks`].
pub(super) struct SharedHooks(pub Arc<HubHooks>);

#[async_trait]
impl Handler for SharedHooks {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        // The per-PUBLISH hook goes straight to its handler; the others (once per connection or
        // SUBSCRIBE) through a boxed future of their own. async_trait boxes this future on every
        // call, and it is as large as the largest state it may hold: inlining the connect and
        // subscribe handlers made every PUBLISH allocate and copy their state too (issue 23).
        if let Parameter::MessagePublishCheckAcl(session, publish) = param {
            let result = self.0.publish_acl(session, publish).await;
            return (false, Some(HookResult::PublishAclResult(result)));
        }
        Box::pin(self.0.hook(param, acc)).await
    }
}

pub(super) struct HubHooks {
    events: Arc<dyn Events>,
    live: Live,
    max_subscriptions: usize,
    scx: ServerContext,
    /// The listener's unauthenticated-connection slots (a failed CONNECT holds one while its
    /// refusal is delayed).
    pending: ConnLimiter,
}

/// The boundary's view of an rmqtt client.
fn client(id: &Id) -> Client<'_> {
    Client {
        client_id: &id.client_id,
        username: id.username_ref(),
        remote_addr: id.remote_addr,
    }
}

impl HubHooks {
    pub(super) fn new(
        events: Arc<dyn Events>,
        live: Live,
        max_subscriptions: usize,
        scx: ServerContext,
        pending: ConnLimiter,
    ) -> Self {
        HubHooks {
            events,
            live,
            max_subscriptions,
            scx,
            pending,
        }
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
            // Handled by `SharedHooks` before it gets here; kept for completeness.
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let result = self.publish_acl(session, publish).await;
                (false, Some(HookResult::PublishAclResult(result)))
            }
            Parameter::ClientConnected(session) => {
                let id = &session.id;
                let replaced = self
                    .live
                    .insert(id.client_id.to_string(), id.clone())
                    .is_some();
                self.events.connected(&client(id), replaced).await;
                self.resumed(session).await;
                (true, acc)
            }
            Parameter::SessionSubscribed(session, subscribe) => {
                self.events
                    .subscribed(&client(&session.id), subscribe.topic_filter.as_ref())
                    .await;
                (true, acc)
            }
            Parameter::ClientDisconnected(session, reason) => {
                let id = &session.id;
                // Only the current connection of a client id leaves the live map; one that was
                // taken over ends after its successor connected (D-34).
                let current = self
                    .live
                    .remove_if(&*id.client_id, |_, live| live == id)
                    .is_some();
                self.events
                    .disconnected(&client(id), &reason.to_string(), current)
                    .await;
                (true, acc)
            }
            _ => (true, acc),
        }
    }

    /// Asks the core about a CONNECT; an allowed one first settles a previous connection of the
    /// same client (S-1.4, `takeover.rs`).
    async fn authenticate(&self, info: &ConnectInfo) -> AuthResult {
        let id = info.id();
        let connect = Connect {
            client: client(id),
            has_username: info.username().is_some(),
            password: info.password().map(|p| p.as_ref()).unwrap_or_default(),
            will_topic: will_topic(info),
            cert_sha256: info.cert().and_then(|c| c.sha256),
            crowded: self.pending.crowded(),
        };
        match self.events.authenticate(&connect).await {
            Admission::Allow => {
                // Things and back ends alike reconnect at once with the same client id.
                super::takeover::settle_previous_session(&self.scx, info).await;
                AuthResult::Allow(false, None::<AuthInfo>)
            }
            Admission::BadCredentials => AuthResult::BadUsernameOrPassword,
            Admission::NotAuthorized => AuthResult::NotAuthorized,
        }
    }

    /// A thing that resumes its session (MQTT 5 Clean Start 0 with a live session, MQTT 3.1.1
    /// Clean Session 0) sends no SUBSCRIBE: its subscriptions come back with the session, which
    /// rmqtt restores only after this hook returns. Watch for them (bounded) and report them as
    /// subscriptions, so that queued OTA tasks go out as they do after a SUBSCRIBE (S-7.3).
    async fn resumed(&self, session: &Session) {
        if is_service_user(session.id.username_ref())
            || !session.session_present().await.unwrap_or(false)
        {
            return;
        }
        let (session, events) = (session.clone(), self.events.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + RESUME_WATCH;
            while tokio::time::Instant::now() < deadline {
                if let Ok(subs) = session.subscriptions().await {
                    let filters: Vec<String> =
                        subs.read().await.keys().map(|f| f.to_string()).collect();
                    if !filters.is_empty() {
                        for filter in &filters {
                            events.subscribed(&client(&session.id), filter).await;
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
        if !may_publish(sender, topic) {
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
        // Boxed: only retained messages pay for the retained store's future.
        if publish.retain && Box::pin(self.retain_quota_reached(topic, publish)).await {
            tracing::debug!(%sender, %topic, "retained publish over the per-thing quota");
            let mqtt5 = session.protocol().await.unwrap_or_default() == MQTT_LEVEL_5;
            // S-2.4: MQTT 5 answers PUBACK 0x97; MQTT 3.1.1 can only close, as for S-2.2.
            return PublishAclResult(PublishResult::reason_code(
                PublishAckReason::QuotaExceeded,
                None,
                !mqtt5,
            ));
        }
        // The PUBACK waits for this answer (rmqtt sends it after this hook returns), so a
        // message is acknowledged only once the routes' outboxes hold it (S-14.3, D-78).
        let verdict = self
            .events
            .publish_in(PublishIn {
                sender,
                topic,
                payload: &publish.payload,
                received_at,
                route: true,
            })
            .await;
        let reason = match verdict {
            Acceptance::Accepted => return PublishAclResult::allow(),
            Acceptance::QuotaExceeded => PublishAckReason::QuotaExceeded,
            Acceptance::Unavailable => PublishAckReason::UnspecifiedError,
        };
        tracing::debug!(%sender, %topic, ?verdict, "publish refused by the routes");
        let mqtt5 = session.protocol().await.unwrap_or_default() == MQTT_LEVEL_5;
        // MQTT 5 answers the reason in the PUBACK (a QoS 0 message is just not forwarded);
        // MQTT 3.1.1 has no negative PUBACK: the connection closes, and the client, which
        // still holds the message, sends it again after reconnecting.
        PublishAclResult(PublishResult::reason_code(reason, None, !mqtt5))
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
        // With `$share/{group}/` already stripped from `filter` by rmqtt.
        let allowed = may_subscribe(sender, filter, subscribe.opts.has_shared_group());
        if !allowed {
            tracing::debug!(%sender, %filter, "subscribe denied by the allow-list");
            return SubscribeReturn::new_failure(SubscribeAckReason::NotAuthorized);
        }
        if !service_user && self.over_subscription_cap(session, filter).await {
            tracing::debug!(%sender, %filter, max = self.max_subscriptions, "subscribe refused: subscription cap");
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
        if subs.len().await < self.max_subscriptions {
            return false;
        }
        !subs
            .to_topic_filters()
            .await
            .iter()
            .any(|held| AsRef::<str>::as_ref(held) == filter)
    }
}
