//! What the hub reads from the broker, in arrival order: Mosquitto's log lines (connects,
//! disconnects, subscriptions, D-63) and the devices' requests, handed to the core's
//! [`Events`].

use std::sync::Arc;

use iothub_spec::topic::Topic;
use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::mpsc;

use super::{Connected, Progress, lock, log};
use crate::cluster::Ownership;
use crate::edge::{Client, Events, PublishIn};

/// Feeds the core in arrival order: log lines become connects, disconnects and subscriptions;
/// request topics become [`Events::publish_in`] from the topic's thing. With several instances
/// (D-73) each takes the requests and presence of its own things, every method response (the
/// call may be waiting here), and, on the leader, OTA results and subscriptions; every instance
/// keeps the whole list of connected clients.
pub(super) async fn feed(
    mut inbound: mpsc::Receiver<Publish>,
    events: Arc<dyn Events>,
    connected: Connected,
    progress: Arc<Progress>,
    ownership: Arc<Ownership>,
) {
    while let Some(publish) = inbound.recv().await {
        handle(&publish, events.as_ref(), &connected, &ownership).await;
        progress.handled.send_modify(|n| *n += 1);
    }
}

/// One message from the broker: a log line, or a device request for the core.
async fn handle(
    publish: &Publish,
    events: &dyn Events,
    connected: &Connected,
    ownership: &Ownership,
) {
    let Ok(topic) = std::str::from_utf8(&publish.topic) else {
        return;
    };
    if topic.starts_with("$SYS/") {
        let Ok(line) = std::str::from_utf8(&publish.payload) else {
            return;
        };
        let subscribe = topic.ends_with("/subscribe");
        if let Some(event) = log::parse(line, subscribe) {
            on_log(event, events, connected, ownership).await;
        }
        return;
    }
    let Some(parsed) = Topic::parse(topic).ok().filter(Topic::is_hub_request) else {
        return;
    };
    let thing = parsed.thing().to_owned();
    let ours = match parsed {
        // The call may be waiting on this instance; an unknown token is dropped.
        Topic::MethodResponse { .. } => true,
        // OTA rollouts run on the leader only.
        Topic::OtaTaskResult { .. } => ownership.is_leader(),
        _ => ownership.owns(&thing),
    };
    if !ours {
        return;
    }
    // Every instance takes a method response (the call may wait on any of them); the routes
    // get it from the thing's owner only, once (D-89). The other requests reach one instance.
    let route = match parsed {
        Topic::MethodResponse { .. } => ownership.owns(&thing),
        _ => true,
    };
    // Mosquitto acknowledged the device's PUBLISH before the hub saw it: the answer cannot
    // reach the device (D-79).
    let _ = events
        .publish_in(PublishIn {
            sender: &thing,
            topic,
            payload: &publish.payload,
            received_at: crate::clock::now_ms(),
            route,
        })
        .await;
}

async fn on_log(
    event: log::LogEvent<'_>,
    events: &dyn Events,
    connected: &Connected,
    ownership: &Ownership,
) {
    match event {
        log::LogEvent::Connected {
            client_id,
            username,
            addr,
        } => {
            // Mosquitto logs no line for the connection a takeover closes: a second connect of a
            // connected identifier is that takeover (S-1.4).
            let remote_addr = addr.parse().ok();
            let replaced = lock(connected)
                .insert(client_id.to_owned(), (username.to_owned(), remote_addr))
                .is_some();
            if !ownership.owns(client_id) {
                return;
            }
            let client = Client {
                client_id,
                username,
                remote_addr,
            };
            events.connected(&client, replaced).await;
        }
        log::LogEvent::Disconnected { client_id, reason } => {
            let Some((username, remote_addr)) = lock(connected).remove(client_id) else {
                return;
            };
            if !ownership.owns(client_id) {
                return;
            }
            let client = Client {
                client_id,
                username: &username,
                remote_addr,
            };
            events.disconnected(&client, reason, true).await;
        }
        log::LogEvent::Subscribed { client_id, filter } => {
            let Some((username, remote_addr)) = lock(connected).get(client_id).cloned() else {
                return;
            };
            // A subscription only makes a thing ready for the OTA rollouts, which the leader runs.
            if !ownership.is_leader() {
                return;
            }
            let client = Client {
                client_id,
                username: &username,
                remote_addr,
            };
            events.subscribed(&client, filter).await;
        }
    }
}
