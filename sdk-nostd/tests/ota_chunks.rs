//! The chunked OTA verifier (feature `ota-verify`): sizes, capacity, checksums, pacing, and its
//! reports going out through `Device::report_ota` as S-7.2 results.

// A failed unwrap in a test is a failed test.
#![allow(clippy::unwrap_used)]
#![cfg(feature = "ota-verify")]

use iothub_sdk_nostd::spec::code::OtaErrorCode;
use iothub_sdk_nostd::spec::payload::{OtaMeta, OtaTask, field};
use iothub_sdk_nostd::spec::topic::Topic;
use iothub_sdk_nostd::{
    Config, Device, Event, Instant, OtaPacing, OtaReport, OtaVerifier, OtaVerifyError, Transmit,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use sha2::Digest;

/// The FIPS 180-2 / RFC 1321 test vector: one million `a`.
const MILLION_A_MD5: &str = "7707d6ae4e027c70eea2a935c2296f21";
const MILLION_A_SHA256: &str = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
const ABC_MD5: &str = "900150983cd24fb0d6963f7d28e17f72";
const ABC_SHA256: &str = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn task<'a>(md5: Option<&'a str>, sha256: Option<&'a str>, len: Option<u64>) -> OtaTask<'a> {
    OtaTask {
        client_token: "c1",
        task_id: "task-1",
        r#type: "app",
        meta: OtaMeta {
            version: "2.0.0",
            md5,
            sha256,
            content_type: None,
            content_length: len,
        },
        file_url: "http://files.invalid/fw.bin",
    }
}

/// Only step-based pacing: a report every `step` points, never by time.
fn steps(step: u8) -> OtaPacing {
    OtaPacing {
        min_step: step,
        min_interval_ms: u64::MAX,
    }
}

fn failed(e: OtaVerifyError) -> Option<u16> {
    match e.report() {
        OtaReport::Failed { code, message } => {
            assert!(message.is_some_and(|m| !m.is_empty()));
            Some(code.as_u16())
        }
        _ => None,
    }
}

#[test]
fn right_file_is_done_with_rising_progress() {
    let file = vec![b'a'; 1_000_000];
    let t = task(Some(MILLION_A_MD5), Some(MILLION_A_SHA256), Some(1_000_000));
    let mut v = OtaVerifier::new(&t, 2_000_000, steps(10), at(0)).unwrap();
    let mut reports = Vec::new();
    for (i, chunk) in file.chunks(4096).enumerate() {
        if let Some(r) = v.feed(at(i as u64), chunk).unwrap() {
            let OtaReport::Ongoing { progress } = r else {
                panic!("{r:?}")
            };
            reports.push(progress);
        }
    }
    assert_eq!(v.received(), 1_000_000);
    assert_eq!(v.progress(), Some(100));
    // 4096-byte chunks are 0.4 % each: each report is the first chunk at or past 10 more points.
    assert_eq!(reports, [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
    assert_eq!(v.finish(), Ok(OtaReport::Done));
}

#[test]
fn either_checksum_alone_and_upper_case_hex_verify() {
    for t in [
        task(Some(ABC_MD5), None, Some(3)),
        task(None, Some(ABC_SHA256), Some(3)),
        task(None, None, None),
    ] {
        let mut v = OtaVerifier::new(&t, 3, OtaPacing::default(), at(0)).unwrap();
        v.feed(at(1), b"ab").unwrap();
        v.feed(at(2), b"c").unwrap();
        assert_eq!(v.finish(), Ok(OtaReport::Done), "{t:?}");
    }
}

#[test]
fn wrong_checksum_is_1403() {
    let mut v = OtaVerifier::new(&task(Some(ABC_MD5), None, Some(3)), 10, steps(1), at(0)).unwrap();
    v.feed(at(1), b"abd").unwrap();
    let e = v.finish().unwrap_err();
    assert_eq!(e, OtaVerifyError::Md5Mismatch);
    assert_eq!(failed(e), Some(1403));

    let mut v = OtaVerifier::new(
        &task(Some(ABC_MD5), Some(ABC_SHA256), None),
        10,
        steps(1),
        at(0),
    )
    .unwrap();
    v.feed(at(1), b"abC").unwrap();
    assert_eq!(v.finish(), Err(OtaVerifyError::Md5Mismatch));
    // The failure sticks.
    assert_eq!(v.finish(), Err(OtaVerifyError::Md5Mismatch));
    assert_eq!(v.feed(at(2), b"x"), Err(OtaVerifyError::Md5Mismatch));

    // Right MD5, wrong SHA-256.
    let bad_sha = "0".repeat(64);
    let mut v = OtaVerifier::new(
        &task(Some(ABC_MD5), Some(&bad_sha), None),
        10,
        steps(1),
        at(0),
    )
    .unwrap();
    v.feed(at(1), b"abc").unwrap();
    let e = v.finish().unwrap_err();
    assert_eq!((e, failed(e)), (OtaVerifyError::Sha256Mismatch, Some(1403)));
}

#[test]
fn too_long_and_too_short_are_1403() {
    let mut v = OtaVerifier::new(&task(None, None, Some(3)), 100, steps(1), at(0)).unwrap();
    v.feed(at(1), b"ab").unwrap();
    let e = v.feed(at(2), b"cd").unwrap_err();
    assert_eq!((e, failed(e)), (OtaVerifyError::TooLong, Some(1403)));
    assert_eq!(v.received(), 2, "the refused chunk is not counted");
    assert_eq!(v.finish(), Err(OtaVerifyError::TooLong));

    let mut v =
        OtaVerifier::new(&task(Some(ABC_MD5), None, Some(3)), 100, steps(1), at(0)).unwrap();
    v.feed(at(1), b"ab").unwrap();
    let e = v.finish().unwrap_err();
    assert_eq!((e, failed(e)), (OtaVerifyError::TooShort, Some(1403)));
}

#[test]
fn over_capacity_is_1404() {
    // Announced too big: refused before any byte.
    let e = OtaVerifier::new(&task(None, None, Some(11)), 10, steps(1), at(0)).unwrap_err();
    assert_eq!((e, failed(e)), (OtaVerifyError::NoSpace, Some(1404)));
    // No content-length: the bytes themselves overflow the capacity.
    let mut v = OtaVerifier::new(&task(None, None, None), 10, steps(1), at(0)).unwrap();
    v.feed(at(1), &[0; 10]).unwrap();
    let e = v.feed(at(2), &[0]).unwrap_err();
    assert_eq!((e, failed(e)), (OtaVerifyError::NoSpace, Some(1404)));
    assert_eq!(v.received(), 10);
}

#[test]
fn unusable_url_is_1400_and_bad_hex_is_400() {
    let mut v = OtaVerifier::new(&task(None, None, Some(3)), 10, steps(1), at(0)).unwrap();
    assert_eq!(
        v.url_unusable(),
        OtaReport::Failed {
            code: OtaErrorCode::FileUrlUnusable,
            message: Some(OtaVerifyError::UrlUnusable.message())
        }
    );
    assert_eq!(v.finish(), Err(OtaVerifyError::UrlUnusable));
    for (md5, sha) in [
        (Some("abc"), None),
        (Some(&"g".repeat(32)[..]), None),
        (None, Some(ABC_MD5)),
    ] {
        let e = OtaVerifier::new(&task(md5, sha, None), 10, steps(1), at(0)).unwrap_err();
        assert_eq!((e, failed(e)), (OtaVerifyError::BadChecksum, Some(400)));
    }
}

#[test]
fn progress_pacing_by_step_and_by_time() {
    let t = task(None, None, Some(100));
    // Step 25, interval 1 s: byte by byte at 10 ms per byte.
    let pacing = OtaPacing {
        min_step: 25,
        min_interval_ms: 1_000,
    };
    let mut v = OtaVerifier::new(&t, 100, pacing, at(0)).unwrap();
    let mut got = Vec::new();
    for i in 1..=100u64 {
        if let Some(OtaReport::Ongoing { progress }) = v.feed(at(i * 10), &[0]).unwrap() {
            got.push((i * 10, progress));
        }
    }
    assert_eq!(got, [(250, 25), (500, 50), (750, 75), (1000, 100)]);

    // Slow download: 1 % per 400 ms; the interval (1 s) fires first, every third byte.
    let mut v = OtaVerifier::new(&t, 100, pacing, at(0)).unwrap();
    let mut got = Vec::new();
    for i in 1..=9u64 {
        if let Some(OtaReport::Ongoing { progress }) = v.feed(at(i * 400), &[0]).unwrap() {
            got.push((i * 400, progress));
        }
    }
    assert_eq!(got, [(1200, 3), (2400, 6), (3600, 9)]);

    // No rise, no report, however long it takes; empty chunks are harmless.
    let mut v = OtaVerifier::new(&task(None, None, Some(1000)), 1000, pacing, at(0)).unwrap();
    assert_eq!(v.feed(at(5_000), &[0; 9]).unwrap(), None);
    assert_eq!(v.feed(at(10_000), &[]).unwrap(), None);
    assert_eq!(
        v.feed(at(10_001), &[0]).unwrap(),
        Some(OtaReport::Ongoing { progress: 1 })
    );

    // Reaching 100 % is always reported, whatever the step.
    let mut v = OtaVerifier::new(&task(None, None, Some(100)), 100, steps(30), at(0)).unwrap();
    let got: Vec<_> = (0..10)
        .filter_map(|i| v.feed(at(i), &[0; 10]).unwrap())
        .collect();
    let want = [30, 60, 90, 100].map(|progress| OtaReport::Ongoing { progress });
    assert_eq!(got, want);

    // Without content-length there is no percentage to report.
    let mut v = OtaVerifier::new(&task(None, None, None), 1000, steps(1), at(0)).unwrap();
    assert_eq!(v.feed(at(1), &[0; 500]).unwrap(), None);
    assert_eq!(v.progress(), None);
}

fn drain(d: &mut Device<'_>, now: u64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while let Some(t) = d.poll_transmit(at(now), &mut buf).unwrap() {
        if let Transmit::Publish { topic, payload, .. } = t
            && topic == (Topic::OtaTaskResult { thing: "t1" }).to_string()
        {
            out.push(serde_json::from_slice(payload).unwrap());
        }
    }
    out
}

/// Runs a task delivered to a real `Device` through the verifier and returns the S-7.2 results
/// the device published.
fn through_device(file: &[u8], meta: Value) -> Vec<Value> {
    let mut tx = [0u8; 2048];
    let mut d: Device<'_> = Device::new(Config::new("t1", &["default"]), &mut tx).unwrap();
    d.handle_connected(at(0), false);
    drain(&mut d, 0);
    let topic = Topic::OtaTask { thing: "t1" }.to_string();
    let body = serde_json::to_vec(&json!({
        field::CLIENT_TOKEN: "c9", field::TASK_ID: "task-9", field::TYPE: "app",
        field::META: meta, field::FILE_URL: "http://files.invalid/fw.bin",
    }))
    .unwrap();
    let Ok(Some(Event::OtaTask(task))) = d.handle_publish(at(1), &topic, &body) else {
        panic!("no task event")
    };
    let mut v = OtaVerifier::new(&task, 1 << 20, steps(30), at(1)).unwrap();
    for (i, chunk) in file.chunks(7).enumerate() {
        match v.feed(at(2 + i as u64), chunk) {
            Ok(Some(r)) => d.report_ota(at(2), r).unwrap(),
            Ok(None) => {}
            Err(e) => {
                d.report_ota(at(2), e.report()).unwrap();
                return drain(&mut d, 3);
            }
        }
    }
    let end = v.finish().unwrap_or_else(OtaVerifyError::report);
    d.report_ota(at(3), end).unwrap();
    drain(&mut d, 3)
}

#[test]
fn reports_go_out_as_s7_results_through_the_device() {
    let file: Vec<u8> = (0..100u8).collect();
    let md5 = hex(&md5::Md5::digest(&file));
    let sent = through_device(
        &file,
        json!({"version": "2", "md5": md5, "content-length": 100}),
    );
    let statuses: Vec<_> = sent
        .iter()
        .map(|r| {
            (
                r[field::STATUS].as_str().unwrap().to_owned(),
                r[field::PROGRESS].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("ongoing".to_owned(), Some(35)),
            ("ongoing".to_owned(), Some(70)),
            ("ongoing".to_owned(), Some(100)),
            ("done".to_owned(), None)
        ]
    );
    assert!(
        sent.iter()
            .all(|r| r[field::TASK_ID] == "task-9" && r[field::CLIENT_TOKEN] == "c9")
    );

    let sent = through_device(&file, json!({"version": "2", "md5": ABC_MD5}));
    let last = sent.last().unwrap();
    assert_eq!(
        (&last[field::STATUS], &last[field::ERR_CODE]),
        (&json!("failed"), &json!(1403))
    );
    assert_eq!(last[field::ERR_MSG], "md5 mismatch");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

proptest! {
    /// However the file is split, the verifier reaches the one-shot digests, and a file with one
    /// byte flipped fails 1403.
    #[test]
    fn arbitrary_chunk_splits_give_the_same_digest(
        file in prop::collection::vec(any::<u8>(), 0..3000),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        flip in any::<prop::sample::Index>(),
    ) {
        let md5 = hex(&md5::Md5::digest(&file));
        let sha = hex(&sha2::Sha256::digest(&file));
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(file.len() + 1)).collect();
        points.sort_unstable();
        let t = task(Some(&md5), Some(&sha), Some(file.len() as u64));
        let run = |data: &[u8]| {
            let mut v = OtaVerifier::new(&t, 4096, steps(1), at(0)).unwrap();
            let mut last = 0;
            let mut start = 0;
            for &p in points.iter().chain(std::iter::once(&data.len())) {
                if let Some(OtaReport::Ongoing { progress }) = v.feed(at(0), &data[start..p]).unwrap() {
                    assert!(progress > last);
                    last = progress;
                }
                start = p;
            }
            v.finish()
        };
        prop_assert_eq!(run(&file), Ok(OtaReport::Done));
        if !file.is_empty() {
            let mut bad = file.clone();
            bad[flip.index(file.len())] ^= 0x01;
            prop_assert_eq!(run(&bad), Err(OtaVerifyError::Md5Mismatch));
        }
    }
}

#[test]
fn verifier_memory_stays_small() {
    // The docs promise about 340 bytes (two hash states, expected digests, counters).
    let size = std::mem::size_of::<OtaVerifier>();
    assert!((200..=400).contains(&size), "OtaVerifier is {size} bytes");
    println!("OtaVerifier: {size} bytes");
}
