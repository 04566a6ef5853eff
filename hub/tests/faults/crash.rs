//! SIGKILL at random points of streams of thing creations (single and batch) and OTA job
//! creations and cancellations: after each restart, every 2xx is there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};

use crate::support::*;

/// Kill-and-restart rounds on the same data directory.
const ROUNDS: usize = 3;
/// Things every OTA job targets.
const TARGETS: usize = 3;

/// Every acknowledged write of the streams.
#[derive(Debug, Default)]
struct Acked {
    /// Things created with 201 (single or batch item).
    things: Vec<String>,
    /// Jobs created with 201.
    jobs: Vec<String>,
    /// Jobs canceled with 200.
    canceled: Vec<String>,
    /// Answers other than 2xx, by status (connection errors are not answers).
    refused: BTreeMap<u16, u64>,
}

/// A REST call that returns `None` when the hub is gone (killed mid-request).
async fn call(
    client: &reqwest::Client,
    http: std::net::SocketAddr,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Option<(u16, Value)> {
    let resp = client
        .request(method, format!("http://{http}/api/v1{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.ok()?;
    Some((status, body))
}

/// Creates things one by one and in batches of 10, OTA jobs on `targets`, and cancels every
/// other job, until the hub is gone or `stop` is set.
async fn write_stream(
    http: std::net::SocketAddr,
    targets: Vec<String>,
    stop: Arc<AtomicBool>,
) -> Acked {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .expect("client");
    let post = reqwest::Method::POST;
    let mut acked = Acked::default();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let id = unique("kill");
        let Some((s, _)) = call(
            &client,
            http,
            post.clone(),
            "/things",
            json!({"thingId": id}),
        )
        .await
        else {
            break;
        };
        match s {
            201 => acked.things.push(id),
            other => *acked.refused.entry(other).or_default() += 1,
        }
        let ids: Vec<String> = (0..10).map(|_| unique("killb")).collect();
        let items: Vec<Value> = ids.iter().map(|i| json!({"thingId": i})).collect();
        let Some((s, b)) = call(
            &client,
            http,
            post.clone(),
            "/things/batch",
            json!({"things": items}),
        )
        .await
        else {
            break;
        };
        if s == 200 {
            for (id, r) in ids.iter().zip(b["data"].as_array().into_iter().flatten()) {
                if r["code"] == 201 {
                    acked.things.push(id.clone());
                }
            }
        } else {
            *acked.refused.entry(s).or_default() += 1;
        }
        let job = json!({
            "targets": {"thingIds": targets},
            "task": {"type": "app", "meta": {"version": format!("1.{i}")}, "fileUrl": "http://fw.example/x.bin"}
        });
        let Some((s, b)) = call(&client, http, post.clone(), "/ota/jobs", job).await else {
            break;
        };
        if s != 201 {
            *acked.refused.entry(s).or_default() += 1;
            continue;
        }
        let job_id = b["data"]["jobId"].as_str().expect("jobId").to_owned();
        acked.jobs.push(job_id.clone());
        if i.is_multiple_of(2) {
            let Some((s, _)) = call(
                &client,
                http,
                post.clone(),
                &format!("/ota/jobs/{job_id}/cancel"),
                json!({}),
            )
            .await
            else {
                break;
            };
            match s {
                200 => acked.canceled.push(job_id),
                other => *acked.refused.entry(other).or_default() += 1,
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_created_thing_or_ota_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hub = Hub::start_with(dir.path(), &[]);
    let mut targets = Vec::new();
    for _ in 0..TARGETS {
        let id = unique("target");
        hub.create_thing(&id).await;
        targets.push(id);
    }
    let mut all = Acked::default();
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|_| tokio::spawn(write_stream(hub.http, targets.clone(), stop.clone())))
            .collect();
        let after = Duration::from_millis(rand::thread_rng().gen_range(300..1500));
        tokio::time::sleep(after).await;
        tokio::task::block_in_place(|| hub.kill());
        stop.store(true, Ordering::SeqCst);
        let mut round_acked = 0;
        for w in writers {
            let a = w.await.expect("writer");
            round_acked += a.things.len() + a.jobs.len() + a.canceled.len();
            all.things.extend(a.things);
            all.jobs.extend(a.jobs);
            all.canceled.extend(a.canceled);
            for (s, n) in a.refused {
                *all.refused.entry(s).or_default() += n;
            }
        }
        eprintln!("round {round}: killed after {after:?}, {round_acked} writes acknowledged");
        tokio::task::block_in_place(|| hub.restart());

        for id in &all.things {
            let (status, body) = hub.rest_thing(id).await;
            assert_eq!(
                status, 200,
                "round {round}: thing {id} was created (201) but is gone: {body}"
            );
        }
        for job in &all.jobs {
            let (status, body) = hub.get(&format!("/ota/jobs/{job}")).await;
            assert_eq!(
                status, 200,
                "round {round}: job {job} was created (201) but is gone: {body}"
            );
            if all.canceled.contains(job) {
                assert_eq!(
                    body["data"]["status"], "canceled",
                    "round {round}: job {job} was canceled (200) but is {body}"
                );
            }
        }
    }
    assert!(
        all.things.len() > 10 && !all.jobs.is_empty() && !all.canceled.is_empty(),
        "a non-trivial stream: {} things, {} jobs, {} cancels",
        all.things.len(),
        all.jobs.len(),
        all.canceled.len()
    );
    assert!(
        all.refused.is_empty(),
        "nothing fails here but the process: {:?}",
        all.refused
    );
}
