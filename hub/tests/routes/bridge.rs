//! The MQTT bridge sink (S-14.4): QoS 1 publishes to another broker (a second hub's embedded
//! one, as its service user), in order; over TLS with a client certificate (mutual TLS); and to
//! a real Mosquitto over mutual TLS that is SIGKILLed and restarted mid-stream.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;
use crate::*;

/// Runs `iothub dev-certs` into `dir` with a client certificate `thing-bridge.pem`.
fn dev_certs(dir: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_iothub"))
        .arg("dev-certs")
        .arg("--out")
        .arg(dir)
        .args(["--thing", "bridge"])
        .output()
        .expect("run iothub dev-certs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn bridged(tls: bool) {
    let certs = tempfile::tempdir().expect("temp dir");
    let path = |f: &str| certs.path().join(f).display().to_string();
    let target = if tls {
        dev_certs(certs.path());
        Hub::start_args(&[
            "--mqtts-addr",
            "127.0.0.1:0",
            "--tls-cert",
            &path("server.pem"),
            "--tls-key",
            &path("server.key"),
            "--tls-client-ca",
            &path("ca.pem"),
        ])
    } else {
        Hub::start()
    };
    let mut watcher = target.connect_service(Proto::V5).await;
    watcher
        .subscribe("$iothub/things/+/messages/property")
        .await
        .expect("subscribe");
    let hub = Hub::start();
    let route = unique("bridge");
    // The target's service user may publish on `$iothub/...` only (S-1.5): no topic prefix.
    let mut sink = json!({"type": "mqtt", "username": SVC_USER, "password": SVC_SECRET});
    if tls {
        let port = target.ready().mqtts.expect("mqtts").port();
        sink["url"] = json!(format!("mqtts://localhost:{port}"));
        sink["caFile"] = json!(path("ca.pem"));
        sink["certFile"] = json!(path("thing-bridge.pem"));
        sink["keyFile"] = json!(path("thing-bridge.key"));
    } else {
        sink["url"] = json!(format!("mqtt://{}", target.mqtt));
    }
    let created = create_route(
        &hub,
        json!({"id": route, "sources": ["telemetry"], "sink": sink, "batchDelayMs": 0,
               "retryInitialMs": 50, "retryMaxMs": 200}),
    )
    .await;
    assert_eq!(created["route"]["sink"]["password"], "****", "{created}");
    let (a, _, mut ca) = hub.new_thing(Proto::V311, "br").await;
    publish_range(&mut ca, &telemetry(&a), 0..20).await;
    let topic = telemetry(&a);
    let s = eventually(SLACK, || async {
        let s = route_status(&hub, &route).await;
        (s["delivered"] == 20).then_some(s)
    })
    .await;
    assert!(s.is_some(), "{}", route_status(&hub, &route).await);
    for n in 0..20u64 {
        let got = watcher.expect_message(&topic, SLACK).await;
        assert_eq!(got["n"], n, "in order");
    }
}

/// Plain MQTT to another broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_bridged_to_another_broker() {
    bridged(false).await;
}

/// MQTT over TLS with a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_bridged_over_mutual_tls() {
    bridged(true).await;
}

/// A Mosquitto 2.0 started by the test: a TLS listener that requires a client certificate
/// (`require_certificate true`, the dev CA) for the bridge, a plain loopback listener for the
/// test's subscriber, and persistence saved every second, so that a subscriber's persistent
/// session outlives a SIGKILL. Killed on drop.
struct TlsMosquitto {
    dir: tempfile::TempDir,
    tls_port: u16,
    plain_port: u16,
    child: Option<std::process::Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl TlsMosquitto {
    fn start(certs: &Path) -> TlsMosquitto {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        // Mosquitto started as root drops to its own user, which must read the certificates
        // and write its state here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod dir");
        for f in ["ca.pem", "server.pem", "server.key"] {
            let to = dir.path().join(f);
            std::fs::copy(certs.join(f), &to).expect("copy certificate");
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let (tls_port, plain_port) = (free_port(), free_port());
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "per_listener_settings false\n\
                 allow_anonymous true\n\
                 persistence true\n\
                 persistence_location {d}/\n\
                 autosave_interval 1\n\
                 max_queued_messages 100000\n\
                 set_tcp_nodelay true\n\
                 log_dest stderr\n\
                 log_type error\n\
                 log_type warning\n\
                 log_type notice\n\
                 listener {tls_port} 127.0.0.1\n\
                 cafile {d}/ca.pem\n\
                 certfile {d}/server.pem\n\
                 keyfile {d}/server.key\n\
                 require_certificate true\n\
                 listener {plain_port} 127.0.0.1\n"
            ),
        )
        .expect("write mosquitto.conf");
        let mut m = TlsMosquitto {
            dir,
            tls_port,
            plain_port,
            child: None,
        };
        m.run();
        m
    }

    /// Starts the broker (again) on the same ports with the same state directory.
    fn run(&mut self) {
        use std::io::Write as _;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("log file");
        writeln!(&log, "--- start").expect("log");
        let child = std::process::Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + STEP;
        for port in [self.tls_port, self.plain_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "mosquitto did not listen: {}",
                    self.log()
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL: no chance to save anything.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn saved(&self) -> bool {
        self.dir.path().join("mosquitto.db").exists()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for TlsMosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the subscriber on Mosquitto took: `(thing, n)` in arrival order, repeats included.
#[derive(Default)]
struct Taken {
    arrivals: Vec<(String, u64)>,
    connects: u32,
    sessions_lost: u32,
}

/// A subscriber with a persistent session (clean session off, QoS 1) on `bridged/#`, that
/// reconnects by itself (rumqttc polls again after an error) and subscribes again only if
/// the broker lost its session.
fn subscriber(port: u16) -> (Arc<Mutex<Taken>>, tokio::task::JoinHandle<()>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let taken = Arc::new(Mutex::new(Taken::default()));
    let mut options = MqttOptions::new(unique("bridged-sub"), "127.0.0.1", port);
    options.set_clean_session(false);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let t = taken.clone();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    let first = {
                        let mut t = t.lock().expect("taken");
                        t.connects += 1;
                        if !ack.session_present && t.connects > 1 {
                            t.sessions_lost += 1;
                        }
                        t.connects == 1
                    };
                    if first || !ack.session_present {
                        let _ = client.subscribe("bridged/#", QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let thing = p.topic.split('/').nth(3).unwrap_or_default().to_owned();
                    let n = serde_json::from_slice::<Value>(&p.payload)
                        .ok()
                        .and_then(|v| v["n"].as_u64());
                    if let Some(n) = n {
                        t.lock().expect("taken").arrivals.push((thing, n));
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (taken, task)
}

const BRIDGE_THINGS: usize = 20;
const BRIDGE_PER_THING: u64 = 100;

/// S-14.4 (issue 17): a bridge to a real Mosquitto over TLS with a client certificate; the
/// broker is SIGKILLed mid-stream and started again on the same port. Every message the hub
/// acknowledged reaches the subscriber on Mosquitto (duplicates counted): the bridge takes a
/// message out of the outbox only after Mosquitto's PUBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_to_mosquitto_over_mutual_tls_survives_its_sigkill() {
    let certs = tempfile::tempdir().expect("temp dir");
    dev_certs(certs.path());
    let path = |f: &str| certs.path().join(f).display().to_string();
    let mut broker = TlsMosquitto::start(certs.path());
    let (taken, sub_task) = subscriber(broker.plain_port);
    // The subscription is in the broker's saved state before anything is sent.
    let subscribed = eventually(STEP, || async {
        let connected = taken.lock().expect("taken").connects > 0;
        (connected && broker.saved()).then_some(())
    })
    .await;
    assert!(subscribed.is_some(), "{}", broker.log());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let hub = Hub::start();
    let route = unique("mosq");
    create_route(
        &hub,
        json!({"id": route, "sources": ["telemetry"],
               "sink": {"type": "mqtt", "url": format!("mqtts://localhost:{}", broker.tls_port),
                        "topicPrefix": "bridged/", "caFile": path("ca.pem"),
                        "certFile": path("thing-bridge.pem"), "keyFile": path("thing-bridge.key"),
                        "timeoutMs": 2000},
               "batchMax": 50, "batchDelayMs": 20, "retryInitialMs": 50, "retryMaxMs": 500,
               "maxAttempts": 1000}),
    )
    .await;
    let mut publishers = Vec::new();
    for _ in 0..BRIDGE_THINGS {
        let (thing, _, mut client) = hub.new_thing(Proto::V311, "mq").await;
        publishers.push(tokio::spawn(async move {
            let topic = telemetry(&thing);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0..BRIDGE_PER_THING {
                tick.tick().await;
                client.publish_json(&topic, &json!({ "n": n })).await;
            }
            (thing, client)
        }));
    }
    // Mid-stream: SIGKILL, 2 s down (connection refused), the same port again.
    let delivered_before = eventually(SLACK, || async {
        let s = route_status(&hub, &route).await;
        (s["delivered"].as_u64() >= Some(300)).then_some(s["delivered"].clone())
    })
    .await
    .expect("the bridge delivers before the kill");
    broker.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = route_status(&hub, &route).await;
    broker.run();

    let mut things = Vec::new();
    for p in publishers {
        things.push(p.await.expect("publisher"));
    }
    let sent = BRIDGE_THINGS as u64 * BRIDGE_PER_THING;
    let status = eventually(Duration::from_secs(60), || async {
        let s = route_status(&hub, &route).await;
        (s["outbox"] == 0 && s["delivered"].as_u64() >= Some(sent)).then_some(s)
    })
    .await;
    let status = status
        .unwrap_or_else(|| panic!("not drained: {}\n{}", taken_summary(&taken), broker.log()));
    let expected: std::collections::BTreeSet<(String, u64)> = things
        .iter()
        .flat_map(|(t, _)| (0..BRIDGE_PER_THING).map(move |n| (t.clone(), n)))
        .collect();
    let all = eventually(SLACK, || async {
        let t = taken.lock().expect("taken");
        let seen: std::collections::BTreeSet<&(String, u64)> = t.arrivals.iter().collect();
        expected
            .iter()
            .all(|e| seen.contains(e))
            .then(|| t.arrivals.clone())
    })
    .await;
    let Some(all) = all else {
        let t = taken.lock().expect("taken");
        let seen: std::collections::BTreeSet<&(String, u64)> = t.arrivals.iter().collect();
        let missing: Vec<_> = expected.iter().filter(|e| !seen.contains(e)).collect();
        panic!(
            "{} of {sent} acknowledged messages never reached Mosquitto's subscriber \
             (first: {:?}); route {status}\n{}",
            missing.len(),
            missing.iter().take(10).collect::<Vec<_>>(),
            broker.log()
        );
    };
    let distinct: std::collections::BTreeSet<&(String, u64)> = all.iter().collect();
    assert_eq!(distinct.len() as u64, sent, "nothing else arrived");
    // First arrivals per thing, to report whether the restart reordered anything.
    let mut firsts: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    let mut seen = std::collections::BTreeSet::new();
    for (thing, n) in &all {
        if seen.insert((thing, n)) {
            firsts.entry(thing).or_default().push(*n);
        }
    }
    let out_of_order = firsts
        .values()
        .filter(|ns| ns.windows(2).any(|w| w[0] > w[1]))
        .count();
    let (connects, lost) = {
        let t = taken.lock().expect("taken");
        (t.connects, t.sessions_lost)
    };
    assert!(connects >= 2, "the subscriber saw the broker go");
    assert!(
        during["failed"].as_u64() > Some(0),
        "the bridge saw the broker go: {during}"
    );
    assert_eq!(status["dropped"], 0, "{status}");
    assert_eq!(status["deadLettered"], 0, "{status}");
    println!(
        "bridge over mutual TLS, Mosquitto SIGKILLed after {delivered_before} delivered and \
         restarted 2 s later: {sent} acknowledged, {} received, {} distinct, {} duplicates; \
         things whose first arrivals are out of order: {out_of_order}; subscriber connects \
         {connects}, sessions lost {lost}; failed attempts {}",
        all.len(),
        distinct.len(),
        all.len() - distinct.len(),
        status["failed"],
    );
    sub_task.abort();
    drop(things);
}

fn taken_summary(taken: &Mutex<Taken>) -> String {
    let t = taken.lock().expect("taken");
    format!("{} arrivals, {} connects", t.arrivals.len(), t.connects)
}
