//! Fleet jobs and their per-thing records (S-12): the same round trip on every backend, cancel
//! and retention, and a failed write reported to the caller with nothing stored.

use iothub_hub::store::StoreError;
use iothub_hub::store::jobs::{JobRecord, JobThingRecord, Operation};
use iothub_spec::code::{JobStatus, JobThingState};
use serde_json::json;

use crate::{Fixture, tags};

fn job(id: &str, things: u64, created_at: u64) -> JobRecord {
    JobRecord {
        job_id: id.to_owned(),
        operation: Operation::Method {
            name: "reboot".into(),
            payload: json!({"delay": 5, "why": "ünïcode"}),
            timeout_s: 10,
        },
        target_query: Some("tags.site = 'b1'".into()),
        status: JobStatus::Running,
        things,
        start_at: created_at,
        end_at: created_at + 60_000,
        max_per_minute: 600,
        retries: 2,
        created_at,
        ended_at: None,
    }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i:04}")).collect()
}

fn done(job: &str, thing: &str, status: JobThingState) -> JobThingRecord {
    JobThingRecord {
        job_id: job.into(),
        thing_id: thing.into(),
        seq: 0,
        status,
        attempts: 1,
        code: Some(503),
        response: Some(json!({"busy": true})),
        error: Some("device busy".into()),
        started_at: Some(100),
        updated_at: 200,
        ended_at: status.is_final().then_some(200),
    }
}

pub async fn jobs_and_things_round_trip(f: Fixture) {
    let db = f.store.jobs().expect("every store keeps jobs");
    // More things than one INSERT carries, so the chunking is exercised.
    let things = ids(1203);
    db.create_job(&job("j1", 1203, 10), &things).await.unwrap();
    let mut second = job("j2", 2, 20);
    second.operation = Operation::Tags {
        replace: false,
        tags: tags(json!({"fw": "2.0", "old": null})),
    };
    second.target_query = None;
    second.status = JobStatus::Scheduled;
    db.create_job(&second, &ids(2)).await.unwrap();
    assert_eq!(
        db.create_job(&job("j1", 1, 30), &ids(1)).await,
        Err(StoreError::AlreadyExists)
    );
    assert_eq!(db.job("j1").await.unwrap(), Some(job("j1", 1203, 10)));
    assert_eq!(db.job("nope").await.unwrap(), None);
    let (total, page) = db.jobs(0, 10).await.unwrap();
    assert_eq!(total, 2);
    assert_eq!(
        page,
        vec![second.clone(), job("j1", 1203, 10)],
        "newest first"
    );
    assert_eq!(db.open_jobs().await.unwrap().len(), 2);

    let (total, page) = db
        .job_things_page("j1", Some(JobThingState::Queued), 2, 500)
        .await
        .unwrap();
    assert_eq!(total, 1203);
    assert_eq!(page.len(), 203);
    assert_eq!(page[0].seq, 1000);
    assert_eq!(page[0].thing_id, "t1000");
    assert_eq!(page[0].status, JobThingState::Queued);
    assert_eq!(page[0].attempts, 0);

    let mut busy = done("j1", "t0001", JobThingState::Failed);
    busy.seq = 1;
    let mut running = done("j1", "t0002", JobThingState::InProgress);
    running.seq = 2;
    running.code = None;
    running.response = None;
    running.error = None;
    let written = db
        .write_job_things(&[busy.clone(), running.clone()], &[])
        .await
        .unwrap();
    assert_eq!(written, vec![true, true]);
    assert_eq!(
        db.job_thing("j1", "t0001").await.unwrap(),
        Some(busy.clone())
    );
    // A final record is never overwritten (e.g. by a late engine write after a cancel).
    let again = db
        .write_job_things(&[done("j1", "t0001", JobThingState::Succeeded)], &[])
        .await
        .unwrap();
    assert_eq!(again, vec![false]);
    assert_eq!(db.job_thing("j1", "t0001").await.unwrap(), Some(busy));
    let counts = db.job_counts("j1").await.unwrap();
    assert_eq!(
        counts.iter().map(|(_, n)| n).sum::<u64>(),
        1203,
        "{counts:?}"
    );
    assert!(counts.contains(&(JobThingState::Failed, 1)));
    assert!(counts.contains(&(JobThingState::InProgress, 1)));
    let open = db.open_job_things("j1").await.unwrap();
    assert_eq!(open.len(), 1202);
    assert_eq!(open[0].thing_id, "t0000");
    assert_eq!(open[1], running);

    // Cancel: queued things end canceled, the one in progress stays; a second cancel is a no-op.
    assert!(db.cancel_job("j1", 500).await.unwrap());
    assert!(!db.cancel_job("j1", 600).await.unwrap());
    assert_eq!(db.cancel_job("nope", 600).await, Err(StoreError::NotFound));
    let j1 = db.job("j1").await.unwrap().unwrap();
    assert_eq!((j1.status, j1.ended_at), (JobStatus::Canceled, Some(500)));
    let open = db.open_job_things("j1").await.unwrap();
    assert_eq!(open, vec![running]);
    let (canceled, _) = db
        .job_things_page("j1", Some(JobThingState::Canceled), 0, 1)
        .await
        .unwrap();
    assert_eq!(canceled, 1201);

    // Ending a job that ended already changes nothing.
    db.write_job_things(&[], &[("j1".into(), JobStatus::Completed, Some(900))])
        .await
        .unwrap();
    assert_eq!(
        db.job("j1").await.unwrap().unwrap().status,
        JobStatus::Canceled
    );
    db.write_job_things(&[], &[("j2".into(), JobStatus::Completed, Some(700))])
        .await
        .unwrap();
    assert!(db.open_jobs().await.unwrap().is_empty());

    // Retention: only jobs that ended before the cut are deleted, with their things.
    assert_eq!(db.delete_jobs_ended_before(600).await.unwrap(), 1);
    assert_eq!(db.job("j1").await.unwrap(), None);
    assert_eq!(db.job_thing("j1", "t0000").await.unwrap(), None);
    assert!(db.job("j2").await.unwrap().is_some());

    // Everything above survives a reopen (a restarted hub).
    let again = f.open_again().await;
    let j2 = again.jobs().unwrap().job("j2").await.unwrap().unwrap();
    assert_eq!(j2.operation, second.operation);
    assert_eq!((j2.status, j2.ended_at), (JobStatus::Completed, Some(700)));
}

pub async fn failed_job_writes_store_nothing(f: Fixture) {
    let db = f.store.jobs().expect("every store keeps jobs");
    // The job row goes in, then the things: a fault on the things' insert leaves no job.
    for rule in ["jobs statement 2", "jobs statement 4", "jobs commit"] {
        f.faults.set(rule);
        let err = db.create_job(&job("j", 1100, 10), &ids(1100)).await;
        assert!(
            matches!(err, Err(StoreError::Unavailable(_))),
            "{rule}: {err:?}"
        );
        f.faults.set("");
        assert_eq!(db.job("j").await.unwrap(), None, "{rule}");
        assert_eq!(db.jobs(0, 10).await.unwrap().0, 0, "{rule}");
        assert_eq!(db.job_thing("j", "t0000").await.unwrap(), None, "{rule}");
    }
    db.create_job(&job("j", 3, 10), &ids(3)).await.unwrap();
    f.faults.set("jobs commit");
    let err = db
        .write_job_things(
            &[done("j", "t0000", JobThingState::Succeeded)],
            &[("j".into(), JobStatus::Completed, Some(50))],
        )
        .await;
    assert!(matches!(err, Err(StoreError::Unavailable(_))), "{err:?}");
    assert!(db.cancel_job("j", 50).await.is_err());
    f.faults.set("");
    let j = db.job("j").await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Running);
    assert_eq!(db.open_job_things("j").await.unwrap().len(), 3);
}
