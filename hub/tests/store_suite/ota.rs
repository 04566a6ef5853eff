//! OTA jobs, tasks and transitions (S-7.3): the same round trip on every backend.

use iothub_hub::store::ota::{
    NewOtaJob, OtaCounts, OtaJobSettings, OtaJobStatus, OtaTaskWrite, OtaTemplate, OtaTransition,
};
use iothub_spec::code::OtaTaskState;

use crate::{Fixture, new_thing};

fn job(things: &[&str]) -> NewOtaJob {
    NewOtaJob {
        job_id: "00000000000000aa".into(),
        template: OtaTemplate {
            task_type: "app".into(),
            version: "1.0".into(),
            md5: None,
            sha256: Some("ab".repeat(32)),
            content_type: None,
            content_length: Some(10),
            file_url: "http://x/fw".into(),
        },
        target_query: None,
        settings: OtaJobSettings {
            max_per_minute: 10,
            timeout_ms: 60_000,
            retries: 1,
        },
        things: things.iter().map(|t| (*t).to_owned()).collect(),
        created_at: 100,
    }
}

pub async fn jobs_tasks_and_transitions_round_trip(f: Fixture) {
    for id in ["a", "b", "c"] {
        f.store.create_thing(&new_thing(id), 1).await.unwrap();
    }
    let store = f.store.ota().expect("every store keeps OTA jobs");
    // Unknown things: nothing stored.
    let missing = store.create_ota_job(&job(&["a", "zz"])).await.unwrap();
    assert_eq!(missing, Err(vec!["zz".to_owned()]));
    assert!(store.ota_job("00000000000000aa").await.unwrap().is_none());

    store
        .create_ota_job(&job(&["c", "a", "b"]))
        .await
        .unwrap()
        .unwrap();
    let j = store.ota_job("00000000000000aa").await.unwrap().unwrap();
    assert_eq!(j.status, OtaJobStatus::Running);
    assert_eq!(j.template, job(&[]).template);
    assert_eq!(j.counts.queued, 3);
    assert_eq!(
        store.ota_running_jobs().await.unwrap(),
        ["00000000000000aa"]
    );
    let open = store.ota_open_tasks("00000000000000aa").await.unwrap();
    let order: Vec<&str> = open.iter().map(|t| t.thing_id.as_str()).collect();
    assert_eq!(order, ["c", "a", "b"], "rollout order is the given order");

    // c: queued -> sent -> failed (code 1403).
    let mut rec = open[0].clone();
    let mut writes = Vec::new();
    for (to, at, code) in [
        (OtaTaskState::Sent, 200, None),
        (OtaTaskState::Failed, 300, Some(1403)),
    ] {
        let from = rec.status;
        rec.status = to;
        rec.err_code = code;
        rec.transitions += 1;
        rec.updated_at = at;
        writes.push(OtaTaskWrite {
            record: rec.clone(),
            transition: Some(OtaTransition {
                attempt: 1,
                from: Some(from),
                to,
                at,
                err_code: code,
            }),
        });
    }
    store
        .ota_write(
            &writes,
            &[("00000000000000aa".into(), OtaJobStatus::Canceled, 400)],
        )
        .await
        .unwrap();
    let (task, transitions) = store
        .ota_task("00000000000000aa", "c")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task, rec);
    let to: Vec<OtaTaskState> = transitions.iter().map(|t| t.to).collect();
    assert_eq!(
        to,
        [
            OtaTaskState::Queued,
            OtaTaskState::Sent,
            OtaTaskState::Failed
        ]
    );
    assert_eq!(transitions[0].from, None);
    assert_eq!(transitions[2].err_code, Some(1403));

    let j = store.ota_job("00000000000000aa").await.unwrap().unwrap();
    assert_eq!(j.status, OtaJobStatus::Canceled);
    assert_eq!(j.updated_at, 400);
    let want = OtaCounts {
        queued: 2,
        failed: 1,
        ..OtaCounts::default()
    };
    assert_eq!(j.counts, want);
    assert!(store.ota_running_jobs().await.unwrap().is_empty());

    let (total, page) = store
        .ota_tasks_page("00000000000000aa", Some(OtaTaskState::Queued), 0, 1)
        .await
        .unwrap();
    assert_eq!((total, page.len(), page[0].thing_id.as_str()), (2, 1, "a"));
    let (total, page) = store
        .ota_tasks_page("00000000000000aa", None, 1, 2)
        .await
        .unwrap();
    assert_eq!((total, page.len(), page[0].thing_id.as_str()), (3, 1, "b"));

    // Deleting a thing removes its task and transitions; writes to it are skipped.
    f.store.delete_thing("c").await.unwrap();
    assert!(
        store
            .ota_task("00000000000000aa", "c")
            .await
            .unwrap()
            .is_none()
    );
    store.ota_write(&writes, &[]).await.unwrap();
    let j = store.ota_job("00000000000000aa").await.unwrap().unwrap();
    assert_eq!(j.counts.total(), 2);
}
