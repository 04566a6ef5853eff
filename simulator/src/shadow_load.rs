//! The shadow-update load: every virtual thing reports its state at a steady pace over its own
//! MQTT connection and checks each reply.
//!
//! Per thing: connect (TCP_NODELAY), subscribe to its `update/accepted` and `update/rejected`,
//! then publish QoS 1 reports with a unique clientToken, at most `max_in_flight` unanswered at
//! once (S-3.9). Each `update/accepted` gives a latency sample (publish → accepted) and a version,
//! which must be exactly one more than the previous one this thing saw (no lost or reordered
//! versions, since nothing else writes these shadows).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use iothub_spec::ids::DEFAULT_SHADOW;
use iothub_spec::payload::{ErrorResponse, UpdateAccepted};
use iothub_spec::topic::Topic;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde::de::IgnoredAny;
use tokio::sync::Barrier;
use tokio::time::{Instant, MissedTickBehavior};

use crate::provision::Credentials;

/// How a run is paced.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// The hub's MQTT address.
    pub mqtt: SocketAddr,
    /// Total updates per second over all things.
    pub rate: f64,
    /// Approximate size of each update payload.
    pub payload_bytes: usize,
    /// How long things keep reporting.
    pub duration: Duration,
    /// Connects per second during the ramp.
    pub ramp_per_sec: u32,
    /// Unanswered updates allowed per thing.
    pub max_in_flight: usize,
    /// How long to wait for replies after the reporting ends.
    pub drain: Duration,
}

/// Live counters, read by the progress line.
#[derive(Debug, Default)]
pub struct Live {
    /// Things connected now.
    pub connected: AtomicU64,
    /// Updates published.
    pub sent: AtomicU64,
    /// `update/accepted` received.
    pub accepted: AtomicU64,
    /// `update/rejected` received.
    pub rejected: AtomicU64,
    /// Ticks skipped because the thing had `max_in_flight` updates unanswered.
    pub throttled: AtomicU64,
}

/// What one thing saw.
#[derive(Debug)]
pub struct ThingOutcome {
    /// Whether it connected and subscribed.
    pub connected: bool,
    /// Why not, if it did not.
    pub error: Option<String>,
    /// Connect + subscribe time.
    pub connect_us: Option<u64>,
    /// Publish → accepted latencies (µs).
    pub latency_us: Histogram<u64>,
    /// Rejections by code.
    pub rejected: BTreeMap<u16, u64>,
    /// Updates never answered.
    pub unanswered: u64,
    /// Accepted versions that were not previous + 1.
    pub out_of_order: u64,
    /// Disconnections after the first connect.
    pub disconnects: u64,
}

/// A latency histogram in µs: 1 µs .. 60 s at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

/// Pause between the last connect and the first report.
const SETTLE: Duration = Duration::from_secs(1);

/// When a thing connects, reports and stops.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// When it connects (paced by the ramp).
    pub connect_at: Instant,
    /// Every thing waits here once its connect has succeeded or failed, so that reporting
    /// starts after the whole ramp and connect work never overlaps the measured period.
    pub all_connected: Arc<Barrier>,
    /// How long reporting lasts once everyone is connected.
    pub duration: Duration,
    /// Time between two reports of this thing.
    pub interval: Duration,
}

/// Runs one virtual thing along its [`Schedule`].
pub async fn run_thing(
    creds: Credentials,
    plan: Arc<LoadPlan>,
    live: Arc<Live>,
    schedule: Schedule,
) -> ThingOutcome {
    let Schedule {
        connect_at: start,
        all_connected,
        duration,
        interval,
    } = schedule;
    let mut outcome = ThingOutcome {
        connected: false,
        error: None,
        connect_us: None,
        latency_us: histogram(),
        rejected: BTreeMap::new(),
        unanswered: 0,
        out_of_order: 0,
        disconnects: 0,
    };
    tokio::time::sleep_until(start).await;
    let began = Instant::now();
    let (client, mut events) = connect(&creds, &plan);
    let thing = creds.thing_id.as_str();
    let accepted_topic = Topic::ShadowUpdateAccepted {
        thing,
        shadow: DEFAULT_SHADOW,
    }
    .to_string();
    let rejected_topic = Topic::ShadowUpdateRejected {
        thing,
        shadow: DEFAULT_SHADOW,
    }
    .to_string();
    let update_topic = Topic::ShadowUpdate {
        thing,
        shadow: DEFAULT_SHADOW,
    }
    .to_string();

    if let Err(e) = handshake(&client, &mut events, &[&accepted_topic, &rejected_topic]).await {
        outcome.error = Some(e);
        all_connected.wait().await;
        return outcome;
    }
    outcome.connected = true;
    outcome.connect_us = Some(began.elapsed().as_micros() as u64);
    live.connected.fetch_add(1, Ordering::Relaxed);
    all_connected.wait().await;
    let report_from = Instant::now() + SETTLE;
    let stop = report_from + duration;

    let mut in_flight: HashMap<u64, Instant> = HashMap::new();
    let mut seq: u64 = 0;
    let mut last_version: Option<u64> = None;
    let mut ticker =
        tokio::time::interval_at(report_from.max(Instant::now()) + jitter(interval), interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let padding = "x".repeat(plan.payload_bytes.saturating_sub(90));
    let deadline = stop + plan.drain;

    loop {
        let reporting = Instant::now() < stop;
        if !reporting && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            _ = ticker.tick(), if reporting => {
                if in_flight.len() >= plan.max_in_flight {
                    live.throttled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                seq += 1;
                let payload = format!(
                    r#"{{"state":{{"reported":{{"temp":{},"seq":{seq},"pad":"{padding}"}}}},"clientToken":"{seq}"}}"#,
                    20 + seq % 10
                );
                in_flight.insert(seq, Instant::now());
                if client.publish(update_topic.as_str(), QoS::AtLeastOnce, false, payload).await.is_err() {
                    break;
                }
                live.sent.fetch_add(1, Ordering::Relaxed);
            }
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = Instant::now();
                    if p.topic == accepted_topic {
                        if let Ok(reply) = serde_json::from_slice::<UpdateAccepted<'_, IgnoredAny, IgnoredAny>>(&p.payload) {
                            if let Some(sent) = reply.client_token.and_then(|t| t.parse::<u64>().ok()).and_then(|t| in_flight.remove(&t)) {
                                let _ = outcome.latency_us.record((now - sent).as_micros().max(1) as u64);
                            }
                            if last_version.is_some_and(|v| reply.version != v + 1) {
                                outcome.out_of_order += 1;
                            }
                            last_version = Some(reply.version);
                            live.accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if p.topic == rejected_topic
                        && let Ok(reply) = serde_json::from_slice::<ErrorResponse<'_>>(&p.payload) {
                        if let Some(t) = reply.client_token.and_then(|t| t.parse::<u64>().ok()) {
                            in_flight.remove(&t);
                        }
                        *outcome.rejected.entry(reply.code).or_default() += 1;
                        live.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    outcome.disconnects += 1;
                    outcome.error.get_or_insert_with(|| format!("connection lost: {e}"));
                    break;
                }
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    outcome.unanswered = in_flight.len() as u64;
    live.connected.fetch_sub(1, Ordering::Relaxed);
    let _ = client.disconnect().await;
    // Let the DISCONNECT go out before the socket is dropped.
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    outcome
}

fn connect(creds: &Credentials, plan: &LoadPlan) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(
        &creds.thing_id,
        plan.mqtt.ip().to_string(),
        plan.mqtt.port(),
    );
    options.set_credentials(&creds.thing_id, &creds.secret);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options.set_inflight(plan.max_in_flight.clamp(1, u16::MAX as usize) as u16 + 4);
    let (client, mut events) = AsyncClient::new(options, plan.max_in_flight + 8);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(10);
    events.set_network_options(network);
    (client, events)
}

async fn handshake(
    client: &AsyncClient,
    events: &mut EventLoop,
    filters: &[&str],
) -> Result<(), String> {
    for filter in filters {
        client
            .subscribe(*filter, QoS::AtLeastOnce)
            .await
            .map_err(|e| format!("subscribe request failed: {e}"))?;
    }
    let mut acks = 0;
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {}
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        return Err("subscription refused".to_owned());
                    }
                    acks += 1;
                    if acks == filters.len() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(format!("connect failed: {e}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .map_err(|_| "connect + subscribe timed out".to_owned())?
}

fn jitter(interval: Duration) -> Duration {
    use rand::Rng;
    let max = interval.as_micros().max(1) as u64;
    Duration::from_micros(rand::thread_rng().gen_range(0..max))
}
