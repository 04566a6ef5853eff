//! Registry sync (docs/spec.md S-13) against a stand-in external registry: a real HTTP server in
//! this process with its own devices (`support/registry.rs`), and the real `iothub` binary.
//!
//! - the scheduled sync (S-13.3) converges: creates, deletes, the batch path, the template, the
//!   refused devices; with `soft_delete` it disables instead;
//! - real-time tasks (S-13.4) survive a SIGKILL while the registry is down, and finish after the
//!   restart through 503s;
//! - the total deadline ends a task with `external-create-failed`;
//! - a task that cannot be written fails the REST create that caused it (D-74);
//! - events are listed with filters (S-13.5) and counted in `/metrics`;
//! - with two instances (Mosquitto and PostgreSQL), only the leader sends the tasks (D-76).

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::mosquitto::{HubOnBroker, Mosquitto};
use support::registry::*;
use support::*;

/// S-13.3: the first round creates 150 things through the batch path from the template, a
/// later round deletes, also through the batch path, the 120 the registry dropped and 3 created
/// in the hub alone, and creates the 5 it added; refused devices become
/// `template-check-failed`; events are filtered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_3_scheduled_sync_converges_both_ways() {
    let data = Arc::new(Data::default());
    devices(&data, (0..150).map(|i| format!("d-{i:03}")));
    data.junk
        .lock()
        .expect("lock")
        .extend([json!({"id": "not a thing id"}), json!({"name": "no id"})]);
    let registry = StandIn::start(data.clone()).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let config = format!(
        "{}[registry_sync.schedule]\ninterval = \"300ms\"\nbatch_threshold = 10\n\
         max_removal_percent = 90\n\
         [registry_sync.schedule.template]\ntags = {{ source = \"lns\", model = \"unknown\" }}\n\
         desired = {{ rate = 60 }}\n",
        config_head(&registry.url())
    );
    let flags = config_flags(tmp.path(), &config);
    let hub = start(&tmp.path().join("data"), &flags);
    let started = Instant::now();
    eventually(CONVERGE, || async {
        (thing_count(&hub, None).await == 150).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("150 things not created\n{}", hub.stderr()));
    eprintln!("first round: 150 things in {:?}", started.elapsed());
    assert_eq!(
        hub_ids(&hub).await,
        data.ids(),
        "the same ids on both sides"
    );

    // The template: its tags under the device's, its desired state in `default`.
    let (s, thing) = hub.call("GET", "/things/d-007", None).await;
    assert_eq!(s, 200, "{thing}");
    assert_eq!(
        thing["data"]["tags"],
        json!({"source": "lns", "model": "x1"})
    );
    // The desired state is written right after the things of the round are created.
    let desired = eventually(STEP, || async {
        let (s, shadow) = hub.call("GET", "/things/d-149/shadows/default", None).await;
        (s == 200).then(|| shadow["data"]["state"]["desired"].clone())
    })
    .await;
    assert_eq!(desired, Some(json!({"rate": 60})), "{}", hub.stderr());
    let round = quiet_round(&hub).await;
    assert_eq!(round["externalDevices"], 150, "{round}");
    let log = full_log(&hub);
    assert!(
        log.lines().any(|l| l.contains("registry sync round done")
            && l.contains("created=150")
            && l.contains("batched=true")),
        "the first round took the batch path\n{}",
        hub.stderr()
    );

    // Things created in the hub alone, devices dropped and added.
    for i in 0..3 {
        let (s, body) = hub
            .call(
                "POST",
                "/things",
                Some(json!({"thingId": format!("local-{i}")})),
            )
            .await;
        assert_eq!(s, 201, "{body}");
    }
    {
        let mut d = data.devices.lock().expect("lock");
        for i in 0..120 {
            d.remove(&format!("d-{i:03}"));
        }
    }
    devices(&data, (0..5).map(|i| format!("n-{i}")));
    let converged = eventually(CONVERGE, || async {
        (hub_ids(&hub).await == data.ids()).then_some(())
    })
    .await;
    assert!(converged.is_some(), "not converged\n{}", hub.stderr());
    quiet_round(&hub).await;
    assert_eq!(thing_count(&hub, None).await, 35);
    let log = full_log(&hub);
    // The 120 removals went through the batch path. A round may have listed the registry
    // while the test removed devices (a listing is paged, not a snapshot), so they may be split
    // over two rounds, each above the threshold of 10; the 3 local things may have gone alone.
    let batch_deleted: u64 = log
        .lines()
        .filter(|l| l.contains("registry sync round done") && l.contains("batched=true"))
        .filter_map(|l| {
            l.split("deleted=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        batch_deleted >= 120,
        "the removals took the batch path: {batch_deleted:?}\n{}",
        log.lines()
            .filter(|l| l.contains("registry sync round"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        data.unauthorized.load(Ordering::SeqCst),
        0,
        "every header right"
    );

    // Events, filtered.
    assert_eq!(count(&hub, "hub-created").await, 155);
    assert_eq!(count(&hub, "hub-deleted").await, 123);
    let mine = events(&hub, "thing=local-1").await;
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0]["kind"], "hub-deleted");
    assert!(
        count(&hub, "template-check-failed").await >= 2,
        "two junk entries per round"
    );
    let first = events(&hub, "limit=2").await;
    assert_eq!(first.len(), 2);
    let id = first[1]["id"].as_u64().expect("id");
    let later = events(&hub, &format!("after={id}&limit=1")).await;
    assert!(later[0]["id"].as_u64().expect("id") > id);
    let since = later[0]["at"].as_u64().expect("at");
    assert!(
        events(&hub, &format!("since={since}&limit=1000"))
            .await
            .iter()
            .all(|e| e["at"].as_u64().expect("at") >= since)
    );
    for bad in [
        "kind=hub-exploded",
        "limit=0",
        "limit=1001",
        "thing=a%20b",
        "color=red",
    ] {
        let (s, body) = hub.call("GET", &format!("/sync/events?{bad}"), None).await;
        assert_eq!(s, 400, "{bad}: {body}");
        assert_eq!(body["code"], 400, "the envelope: {body}");
    }
    assert_eq!(metric(&hub, "hub-created").await, 155);
    assert_eq!(metric(&hub, "hub-deleted").await, 123);
    drop(registry);
}

/// S-13.3 with `soft_delete`: a dropped device disables its thing, nothing is deleted (three
/// at once, over a threshold of two: the batch path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_3_soft_delete_disables_instead_of_deleting() {
    let data = Arc::new(Data::default());
    devices(&data, (0..10).map(|i| format!("s-{i}")));
    let registry = StandIn::start(data.clone()).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let config = format!(
        "{}[registry_sync.schedule]\ninterval = \"300ms\"\nsoft_delete = true\n\
         batch_threshold = 2\n",
        config_head(&registry.url())
    );
    let flags = config_flags(tmp.path(), &config);
    let hub = start(&tmp.path().join("data"), &flags);
    eventually(CONVERGE, || async {
        (thing_count(&hub, None).await == 10).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("10 things not created\n{}", hub.stderr()));
    {
        let mut d = data.devices.lock().expect("lock");
        for i in 0..3 {
            d.remove(&format!("s-{i}"));
        }
    }
    eventually(CONVERGE, || async {
        (thing_count(&hub, Some(false)).await == 3).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("3 things not disabled\n{}", hub.stderr()));
    // A round that changes nothing: every event is stored, nothing else changes.
    quiet_round(&hub).await;
    assert_eq!(thing_count(&hub, None).await, 10, "nothing deleted");
    assert_eq!(thing_count(&hub, Some(false)).await, 3);
    assert_eq!(count(&hub, "hub-disabled").await, 3);
    assert_eq!(count(&hub, "hub-deleted").await, 0);
    let (_, s0) = hub.call("GET", "/things/s-0", None).await;
    assert_eq!(s0["data"]["enabled"], false);

    // The console's sync page shows the same events.
    let page = console_page(&hub, "/console/sync").await;
    assert!(page.contains("soft delete"), "{page}");
    assert!(
        page.contains("hub-disabled") && page.contains("s-2"),
        "{page}"
    );
    drop(registry);
}

/// S-13.3: a list that would remove more than `max_removal_percent` (default 50) of the hub's
/// things removes none, and the round says why; a smaller change goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_3_an_emptied_list_does_not_wipe_the_registry() {
    let data = Arc::new(Data::default());
    devices(&data, (0..10).map(|i| format!("g-{i}")));
    let registry = StandIn::start(data.clone()).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let config = format!(
        "{}[registry_sync.schedule]\ninterval = \"300ms\"\n",
        config_head(&registry.url())
    );
    let flags = config_flags(tmp.path(), &config);
    let hub = start(&tmp.path().join("data"), &flags);
    eventually(CONVERGE, || async {
        (thing_count(&hub, None).await == 10).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("10 things not created\n{}", hub.stderr()));

    // The adapter answers an empty list: the round refuses, every thing stays.
    data.devices.lock().expect("lock").clear();
    let since = now_ms();
    let error = eventually(CONVERGE, || async {
        let (_, status) = hub.call("GET", "/sync", None).await;
        let r = &status["data"]["lastRound"];
        let fresh = r["startedAt"].as_u64().is_some_and(|t| t >= since);
        fresh
            .then(|| r["error"].as_str().map(str::to_owned))
            .flatten()
    })
    .await
    .unwrap_or_else(|| panic!("no refused round\n{}", hub.stderr()));
    assert!(error.contains("refused to remove 10 of 10"), "{error}");
    assert_eq!(thing_count(&hub, None).await, 10, "nothing deleted");
    assert_eq!(count(&hub, "hub-deleted").await, 0);

    // Half of them gone from the list (not more than 50 %): removed.
    devices(&data, (5..10).map(|i| format!("g-{i}")));
    eventually(CONVERGE, || async {
        (thing_count(&hub, None).await == 5).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("5 things not deleted\n{}", hub.stderr()));
    // The round's events are recorded after its removals: wait for them too.
    let deleted = eventually(CONVERGE, || async {
        let n = count(&hub, "hub-deleted").await;
        (n >= 5).then_some(n)
    })
    .await;
    assert_eq!(deleted, Some(5), "{}", hub.stderr());
    drop(registry);
}

/// S-13.4, D-74: changes made while the registry is down become tasks; the hub is killed
/// (SIGKILL) with them pending; after the restart they go through, past 503s, in order per
/// thing, and the registry ends with the hub's enabled things.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_4_tasks_survive_sigkill_and_finish_after_restart() {
    tasks_survive_sigkill(None).await;
}

/// The same on PostgreSQL (its own trigger and queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_4_tasks_survive_sigkill_on_postgres() {
    let url = tokio::task::spawn_blocking(|| postgres::shared().fresh_database())
        .await
        .expect("postgres");
    tasks_survive_sigkill(Some(url)).await;
}

async fn tasks_survive_sigkill(database_url: Option<String>) {
    let data = Arc::new(Data::default());
    let mut registry = StandIn::down(data.clone()).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let retry = "interval = \"200ms\"\nmax_interval = \"1s\"\nmax_attempts = 1000\n\
                 deadline = \"1h\"\n";
    let mut flags = config_flags(tmp.path(), &push_config(&registry.url(), retry));
    if let Some(url) = database_url {
        flags.extend(["--database-url".to_owned(), url]);
    }
    let mut hub = start(&tmp.path().join("data"), &flags);
    let items: Vec<Value> = (0..20)
        .map(|i| json!({"thingId": format!("p-{i:02}"), "tags": {"n": i}}))
        .collect();
    let (s, body) = hub
        .call("POST", "/things/batch", Some(json!({"things": items})))
        .await;
    assert_eq!(s, 200, "{body}");
    for id in ["p-00", "p-01"] {
        let (s, body) = hub.call("DELETE", &format!("/things/{id}"), None).await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, body) = hub
        .call("PATCH", "/things/p-02", Some(json!({"enabled": false})))
        .await;
    assert_eq!(s, 200, "{body}");
    // The registry is unreachable: attempts fail and are retried.
    eventually(CONVERGE, || async {
        (count(&hub, "external-create-error").await >= 20).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("no failed attempts recorded\n{}", hub.stderr()));
    let (_, status) = hub.call("GET", "/sync", None).await;
    let pending = status["data"]["pendingTasks"].as_u64().expect("pending");
    assert_eq!(pending, 23, "20 creates, 2 deletes, 1 disable: {status}");
    assert!(metric(&hub, "external-create-error").await >= 20);

    tokio::task::block_in_place(|| hub.kill());
    data.fail_writes.store(5, Ordering::SeqCst);
    registry.start_again().await;
    let restarted = Instant::now();
    tokio::task::block_in_place(|| hub.restart());
    let done = eventually(CONVERGE, || async {
        let (_, status) = hub.call("GET", "/sync", None).await;
        (status["data"]["pendingTasks"] == 0).then_some(())
    })
    .await;
    assert!(done.is_some(), "tasks left\n{}", hub.stderr());
    eprintln!("tasks done {:?} after the restart", restarted.elapsed());
    let expected: Vec<String> = (3..20).map(|i| format!("p-{i:02}")).collect();
    assert_eq!(
        data.ids(),
        expected,
        "the registry holds the enabled things"
    );
    assert_eq!(data.refused.load(Ordering::SeqCst), 5, "five 503s answered");
    assert_eq!(
        Value::Object(data.devices.lock().expect("lock")["p-07"].clone()),
        json!({"n": 7}),
        "tags sent"
    );
    assert_eq!(data.unauthorized.load(Ordering::SeqCst), 0);
    // Every thing's create succeeded once (p-00..p-02 then were deleted).
    assert_eq!(count(&hub, "external-created").await, 20);
    assert_eq!(count(&hub, "external-deleted").await, 3);
    let p0 = events(&hub, "thing=p-00&limit=1000").await;
    let last = p0.last().expect("events of p-00");
    assert_eq!(
        last["kind"], "external-deleted",
        "create before delete: {p0:?}"
    );
    assert_eq!(
        metric(&hub, "external-created").await,
        20,
        "counted since the restart"
    );

    // Real time now: a new thing reaches the registry within a few polls.
    let (s, _) = hub
        .call("POST", "/things", Some(json!({"thingId": "p-live"})))
        .await;
    assert_eq!(s, 201);
    eventually(Duration::from_secs(10), || async {
        data.devices
            .lock()
            .expect("lock")
            .contains_key("p-live")
            .then_some(())
    })
    .await
    .expect("p-live pushed");
    registry.stop().await;
}

/// S-13.4: a task whose deadline passes ends with `external-create-failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_4_the_deadline_gives_a_task_up() {
    let data = Arc::new(Data::default());
    data.fail_writes.store(u64::MAX, Ordering::SeqCst);
    let registry = StandIn::start(data.clone()).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let retry = "interval = \"100ms\"\nmax_interval = \"300ms\"\ndeadline = \"2s\"\n";
    let flags = config_flags(tmp.path(), &push_config(&registry.url(), retry));
    let hub = start(&tmp.path().join("data"), &flags);
    let created = Instant::now();
    let (s, _) = hub
        .call("POST", "/things", Some(json!({"thingId": "late"})))
        .await;
    assert_eq!(s, 201);
    let failed = eventually(CONVERGE, || async {
        events(&hub, "kind=external-create-failed&thing=late")
            .await
            .first()
            .cloned()
    })
    .await
    .unwrap_or_else(|| panic!("not given up\n{}", hub.stderr()));
    let took = created.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "given up after {took:?}"
    );
    let detail = failed["detail"].as_str().expect("detail");
    assert!(detail.contains("deadline"), "{detail}");
    let errors = count(&hub, "external-create-error").await;
    assert!(errors >= 3, "retried before giving up: {errors}");
    assert_eq!(failed["attempt"].as_u64(), Some(errors as u64 + 1));
    assert_eq!(metric(&hub, "external-create-failed").await, 1);
    let (_, status) = hub.call("GET", "/sync", None).await;
    assert_eq!(status["data"]["pendingTasks"], 0, "{status}");
    assert!(data.ids().is_empty());
    eprintln!("given up after {took:?} and {errors} retries");
    // A graceful stop with the sync running exits 0.
    let mut hub = hub;
    let status = tokio::task::block_in_place(|| hub.terminate(Duration::from_secs(10)));
    assert!(status.success(), "{status:?}\n{}", hub.stderr());
    drop(registry);
}

/// D-74: when the task cannot be written, the create that caused it fails (503) and leaves
/// nothing; once the table is back (and the hub restarted), creates and their tasks work again.
/// The fault is real: the task table is dropped under the running hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d74_a_task_that_cannot_be_written_fails_its_create() {
    use sqlx::Connection;
    let data = Arc::new(Data::default());
    let registry = StandIn::start(data.clone()).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let flags = config_flags(tmp.path(), &push_config(&registry.url(), ""));
    let dir = tmp.path().join("data");
    let hub = start(&dir, &flags);
    let url = format!("sqlite://{}", dir.join("iothub.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open db");
    let schema: (String,) =
        sqlx::query_as("SELECT sql FROM sqlite_master WHERE name = 'registry_sync_tasks'")
            .fetch_one(&mut db)
            .await
            .expect("schema");
    sqlx::query("DROP TABLE registry_sync_tasks")
        .execute(&mut db)
        .await
        .expect("drop");
    let (s, body) = hub
        .call("POST", "/things", Some(json!({"thingId": "orphan"})))
        .await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["code"], 503);
    let (s, _) = hub.call("GET", "/things/orphan", None).await;
    assert_eq!(s, 404, "the thing was not stored without its task");
    let (s, body) = hub
        .call(
            "POST",
            "/things/batch",
            Some(json!({"things": [{"thingId": "o-1"}, {"thingId": "o-2"}]})),
        )
        .await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(thing_count(&hub, None).await, 0);

    sqlx::query(&schema.0)
        .execute(&mut db)
        .await
        .expect("recreate");
    db.close().await.expect("close");
    // The running hub's writer keeps failing on its cached statement (SQLite does not
    // re-prepare it); a restart opens new connections on the repaired schema.
    let mut hub = hub;
    tokio::task::block_in_place(|| hub.restart());
    let (s, body) = hub
        .call("POST", "/things", Some(json!({"thingId": "orphan"})))
        .await;
    assert_eq!(s, 201, "{body}\n{}", hub.stderr());
    eventually(Duration::from_secs(10), || async {
        data.devices
            .lock()
            .expect("lock")
            .contains_key("orphan")
            .then_some(())
    })
    .await
    .expect("pushed once the table is back");
    drop(registry);
}

/// D-58 with S-13.5: the read-only scope reads the events, the registry scope does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_5_events_are_read_by_admin_and_read_only_tokens() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ro = "read-only-token-0123456789";
    let reg = "registry-token-0123456789";
    let hub = start(
        &tmp.path().join("data"),
        &[
            "--api-token".into(),
            format!("read-only:{ro},registry:{reg}"),
        ],
    );
    let (s, body) = hub.call_as(Some(ro), "GET", "/sync/events", None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["data"], json!([]));
    let (s, body) = hub.call_as(Some(ro), "GET", "/sync", None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["data"]["configured"], false);
    let (s, _) = hub.call_as(Some(reg), "GET", "/sync/events", None).await;
    assert_eq!(s, 403);
    let (s, _) = hub.call_as(None, "GET", "/sync/events", None).await;
    assert_eq!(s, 401);
    let (s, doc) = hub.call_as(None, "GET", "/openapi.json", None).await;
    assert_eq!(s, 200);
    assert!(doc["paths"]["/api/v1/sync/events"]["get"].is_object());
}

/// D-76: two instances on one Mosquitto and one PostgreSQL share the task queue; changes made
/// through either become tasks, and only the leader sends them: each reaches the registry once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d76_two_instances_send_each_task_once() {
    let data = Arc::new(Data::default());
    let registry = StandIn::start(data.clone()).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let retry = "interval = \"100ms\"\nmax_interval = \"500ms\"\n";
    let flags = config_flags(tmp.path(), &push_config(&registry.url(), retry));
    let (m, db) =
        tokio::task::block_in_place(|| (Mosquitto::start(), postgres::shared().fresh_database()));
    let instance = |name: &str| {
        let mut args: Vec<&str> = vec!["--database-url", &db, "--instance-id", name];
        args.extend(flags.iter().map(String::as_str));
        tokio::task::block_in_place(|| m.hub_with(&args))
    };
    let a = instance("a");
    let b = instance("b");
    for (hub, prefix) in [(&a, "ca"), (&b, "cb")] {
        for i in 0..10 {
            let id = format!("{prefix}-{i}");
            let (s, body) = hub
                .call("POST", "/things", Some(json!({"thingId": id})))
                .await;
            assert_eq!(s, 201, "{body}");
        }
    }
    eventually(CONVERGE, || async {
        let (_, status) = a.call("GET", "/sync", None).await;
        (data.ids().len() == 20 && status["data"]["pendingTasks"] == 0).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("not all sent\n{}\n{}", a.stderr(), b.stderr()));
    assert_eq!(
        data.creates.load(Ordering::SeqCst),
        20,
        "each task sent once"
    );
    assert_eq!(
        count(&b, "external-created").await,
        20,
        "one queue, one database"
    );
    assert_eq!(
        metric(&a, "external-created").await,
        20,
        "a, the leader, sent them"
    );
    assert_eq!(metric(&b, "external-created").await, 0, "b sent none");
    drop(registry);
}
