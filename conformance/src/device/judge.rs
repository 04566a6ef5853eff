//! Pure judges of a device's behaviour over the scripted hub's observation log. Their unit
//! tests feed fabricated logs of broken devices (a request before its reply subscription, a
//! forbidden topic, a falling OTA progress, a tight reconnect loop) to prove each can fail.

use std::time::Duration;

use iothub_spec::code::{OtaErrorCode, OtaStatus};
use iothub_spec::limits::Limits;
use iothub_spec::payload::{self, field};
use iothub_spec::topic::{Topic, thing_may_subscribe};
use serde_json::Value;

use super::hub::{Obs, ObsEv};

/// MQTT topic matching (3.1.1 §4.7, 5 §4.7): `+` matches one level, a final `#` the parent
/// level and everything below; a topic starting with `$` is not matched by a filter starting
/// with a wildcard.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match t.next() {
            Some(level) if f == "+" || f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// The reply topics a device must be subscribed to before it sends a request on `t` (S-2
/// table): a get needs its accepted/rejected replies and the shadow's deltas (so nothing
/// changed between the document and the subscription is missed), an update its
/// accepted/rejected replies, an NTP request `T/ntp/resp`.
pub fn replies_needed(t: &Topic<'_>) -> Vec<String> {
    let mut out = Vec::new();
    match *t {
        Topic::ShadowGet { thing, shadow } => {
            out.extend(t.accepted().map(|t| t.to_string()));
            out.extend(t.rejected().map(|t| t.to_string()));
            out.push(Topic::ShadowUpdateDelta { thing, shadow }.to_string());
        }
        Topic::ShadowUpdate { .. } => {
            out.extend(t.accepted().map(|t| t.to_string()));
            out.extend(t.rejected().map(|t| t.to_string()));
        }
        Topic::NtpRequest { .. } => out.extend(t.reply().map(|t| t.to_string())),
        _ => {}
    }
    out
}

/// Problems with the order of subscriptions and requests on connection `conn`: every request
/// must come after granted subscriptions covering its replies ([`replies_needed`]).
pub fn subscribed_before_requests(log: &[Obs], conn: u32) -> Vec<String> {
    let mut subs: Vec<&str> = Vec::new();
    let mut problems = Vec::new();
    for o in log.iter().filter(|o| o.conn == conn) {
        match &o.ev {
            ObsEv::Subscribe {
                filter,
                granted: true,
            } => subs.push(filter),
            ObsEv::Publish { topic, .. } => {
                let Ok(t) = Topic::parse(topic) else { continue };
                for need in replies_needed(&t) {
                    if !subs.iter().any(|f| filter_matches(f, &need)) {
                        problems.push(format!(
                            "published {topic} before subscribing to a filter covering {need}"
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    problems.dedup();
    problems
}

/// Every SUBSCRIBE and PUBLISH of the device outside its S-2.1 allow-list.
pub fn allow_list(log: &[Obs], thing: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for o in log {
        match &o.ev {
            ObsEv::Subscribe { filter, .. } if !thing_may_subscribe(filter, thing) => problems
                .push(format!(
                    "S-2.1 subscribed to {filter:?}, outside its allow-list"
                )),
            ObsEv::Publish { topic, .. }
                if !Topic::parse(topic).is_ok_and(|t| t.thing_may_publish(thing)) =>
            {
                problems.push(format!(
                    "S-2.1 published on {topic:?}, outside its allow-list"
                ))
            }
            _ => {}
        }
    }
    problems
}

/// Checks a request's clientToken (S-4.1): a string of 1 to 64 bytes. Returns it.
pub fn client_token(body: &Value, what: &str) -> Result<String, String> {
    match body.get(field::CLIENT_TOKEN) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= Limits::DEFAULT.max_client_token => {
            Ok(s.clone())
        }
        Some(v) => Err(format!(
            "S-4.1 {what} has clientToken {v} (want a string of 1 to {} bytes)",
            Limits::DEFAULT.max_client_token
        )),
        None => Err(format!("S-4.1 {what} carries no clientToken: {body}")),
    }
}

/// Checks a direct-method response body (S-5.2) answering the call with `token`, wanting
/// `code`.
pub fn method_response(body: &Value, token: &str, code: u16) -> Result<(), String> {
    let text = body.to_string();
    let r: payload::MethodResponse<'_, Value> = serde_json::from_str(&text).map_err(|e| {
        format!("S-5.2 response is not {{clientToken, code, message?, data?}} ({e}): {body}")
    })?;
    if r.client_token != token {
        return Err(format!(
            "S-5.2 response clientToken {:?}, want the call's {token:?}",
            r.client_token
        ));
    }
    if r.code != code {
        return Err(format!(
            "S-5.2 response code {}, want {code}: {body}",
            r.code
        ));
    }
    Ok(())
}

/// Checks an NTP request body (S-6.1): `{"clientSendTime": ms}`. Returns the time.
pub fn ntp_request(body: &Value) -> Result<u64, String> {
    let text = body.to_string();
    match serde_json::from_str::<payload::NtpRequest>(&text) {
        Ok(r) => Ok(r.client_send_time),
        Err(e) => Err(format!(
            "S-6.1 NTP request is not {{\"clientSendTime\": ms}} ({e}): {body}"
        )),
    }
}

/// Checks the OTA results a device sent for one task (S-7.2), in order: each well-formed with
/// the task's clientToken and taskId; `ongoing` results carry a progress of 0..=100 that never
/// falls; then exactly one final result (`done`, `failed` with a defined `errCode`, or
/// `canceled`), and nothing after it. Returns the final status.
pub fn ota_sequence(results: &[Value], token: &str, task_id: &str) -> Result<OtaStatus, String> {
    let mut last_progress: Option<u8> = None;
    let mut fin: Option<OtaStatus> = None;
    for (i, body) in results.iter().enumerate() {
        let text = body.to_string();
        let r: payload::OtaResult<'_> = serde_json::from_str(&text)
            .map_err(|e| format!("S-7.2 result #{i} is malformed ({e}): {body}"))?;
        if r.client_token != token || r.task_id != task_id {
            return Err(format!(
                "S-7.2 result #{i} has clientToken {:?} / taskId {:?}, want {token:?} / {task_id:?}",
                r.client_token, r.task_id
            ));
        }
        if let Some(f) = fin {
            return Err(format!(
                "S-7.2 result #{i} ({}) comes after the final {}",
                r.status.as_str(),
                f.as_str()
            ));
        }
        match r.status {
            OtaStatus::Ongoing => {
                let Some(p) = r.progress else {
                    return Err(format!(
                        "S-7.2 ongoing result #{i} without progress: {body}"
                    ));
                };
                if p > 100 {
                    return Err(format!("S-7.2 progress {p} over 100"));
                }
                if let Some(prev) = last_progress
                    && p < prev
                {
                    return Err(format!("S-7.2 progress fell from {prev} to {p}"));
                }
                last_progress = Some(p);
            }
            OtaStatus::Failed => {
                let ok = r.err_code.and_then(OtaErrorCode::from_u16).is_some();
                if !ok {
                    return Err(format!(
                        "S-7.2 failed result without an errCode of S-7.2 (400, 500, 1400, 1403, 1404): {body}"
                    ));
                }
                fin = Some(r.status);
            }
            s => fin = Some(s),
        }
    }
    fin.ok_or_else(|| format!("S-7.2 no final result (done, failed or canceled) among {results:?}"))
}

/// Shortest pause accepted between two reconnect attempts.
pub const MIN_RETRY_GAP: Duration = Duration::from_millis(50);

/// Checks the pauses between consecutive connection attempts after a drop: the device must not
/// retry in a tight loop, i.e. the median pause is at least [`MIN_RETRY_GAP`]. A profile check:
/// docs/spec.md has no reconnect clause, so any strategy that does not hammer the hub passes
/// (a fixed retry, an exponential backoff, with or without jitter), and the verdict does not
/// depend on where the jitter happened to fall (one short jittered pause, or a later pause
/// shorter than the first, is not a failure).
pub fn backoff(gaps: &[Duration]) -> Result<(), String> {
    let mut sorted = gaps.to_vec();
    sorted.sort();
    match sorted.get(sorted.len() / 2) {
        Some(median) if *median < MIN_RETRY_GAP => Err(format!(
            "profile check (no clause): retried in a tight loop, median pause {median:?} below \
             {MIN_RETRY_GAP:?} (pauses {gaps:?})"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::mqtt::Proto;

    fn o(conn: u32, ev: ObsEv) -> Obs {
        Obs {
            at: Instant::now(),
            conn,
            ev,
        }
    }

    fn sub(f: &str) -> ObsEv {
        ObsEv::Subscribe {
            filter: f.into(),
            granted: true,
        }
    }

    fn publ(t: &str) -> ObsEv {
        ObsEv::Publish {
            topic: t.into(),
            payload: Bytes::from_static(b"{}"),
            qos: 1,
            retain: false,
        }
    }

    const GET: &str = "$iothub/things/t/shadows/name/default/get";

    #[test]
    fn request_before_subscription_fails() {
        let good = [
            o(
                1,
                ObsEv::Connect {
                    proto: Proto::V5,
                    client_id: "t".into(),
                    username: Some("t".into()),
                    password_ok: true,
                    accepted: true,
                },
            ),
            o(1, sub("$iothub/things/t/shadows/name/default/get/+")),
            o(1, sub("$iothub/things/t/shadows/name/default/update/+")),
            o(1, publ(GET)),
        ];
        assert!(subscribed_before_requests(&good, 1).is_empty());
        let bad = [o(1, publ(GET)), good[1].clone(), good[2].clone()];
        assert_eq!(subscribed_before_requests(&bad, 1).len(), 3);
        // Subscriptions of an earlier connection do not count.
        let mut later = good.to_vec();
        later.push(o(2, publ(GET)));
        assert!(!subscribed_before_requests(&later, 2).is_empty());
        let only_get = [good[1].clone(), o(1, publ(GET))];
        assert_eq!(
            subscribed_before_requests(&only_get, 1).len(),
            1,
            "delta needed"
        );
    }

    #[test]
    fn topic_matching() {
        assert!(filter_matches(
            "$iothub/things/t/methods/+/req",
            "$iothub/things/t/methods/m/req"
        ));
        assert!(filter_matches(
            "$iothub/things/t/#",
            "$iothub/things/t/ntp/resp"
        ));
        assert!(filter_matches("$iothub/things/t/#", "$iothub/things/t"));
        assert!(!filter_matches("#", "$iothub/things/t"));
        assert!(!filter_matches("+/things/t", "$iothub/things/t"));
        assert!(filter_matches("+/b", "a/b"));
        assert!(!filter_matches(
            "$iothub/things/t/get/+",
            "$iothub/things/t/get"
        ));
        assert!(!filter_matches(
            "$iothub/things/t/get",
            "$iothub/things/t/get/accepted"
        ));
    }

    #[test]
    fn allow_list_catches_foreign_topics() {
        let ok = [
            o(1, sub("$iothub/things/t/#")),
            o(1, publ(GET)),
            o(1, publ("$iothub/user/things/t/x")),
        ];
        assert!(allow_list(&ok, "t").is_empty());
        let bad = [
            o(1, sub("$iothub/things/+/methods/+/req")),
            o(1, publ("$iothub/things/u/shadows/name/default/get")),
            o(
                1,
                publ("$iothub/things/t/shadows/name/default/update/delta"),
            ),
            o(1, publ("plain/topic")),
        ];
        assert_eq!(allow_list(&bad, "t").len(), 4);
    }

    #[test]
    fn tokens_and_method_responses() {
        assert_eq!(
            client_token(&json!({"clientToken": "a"}), "x").unwrap(),
            "a"
        );
        assert!(client_token(&json!({}), "x").is_err());
        assert!(client_token(&json!({"clientToken": 5}), "x").is_err());
        assert!(client_token(&json!({"clientToken": "a".repeat(65)}), "x").is_err());
        let r = json!({"clientToken": "k", "code": 200, "data": {"a": 1}});
        assert!(method_response(&r, "k", 200).is_ok());
        assert!(method_response(&r, "other", 200).is_err());
        assert!(method_response(&r, "k", 404).is_err());
        assert!(method_response(&json!({"code": 200}), "k", 200).is_err());
        assert!(method_response(&json!({"clientToken": "k", "code": "200"}), "k", 200).is_err());
    }

    #[test]
    fn ntp_request_shape() {
        assert_eq!(ntp_request(&json!({"clientSendTime": 12})).unwrap(), 12);
        assert!(ntp_request(&json!({"clientSendTime": "12"})).is_err());
        assert!(ntp_request(&json!({"sendTime": 12})).is_err());
        assert!(ntp_request(&json!({"clientSendTime": -1})).is_err());
    }

    fn res(status: &str, extra: Value) -> Value {
        let mut v = json!({"clientToken": "c", "taskId": "t", "status": status, "timestamp": 1});
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        v
    }

    #[test]
    fn ota_sequences() {
        let good = [
            res("ongoing", json!({"progress": 0})),
            res("ongoing", json!({"progress": 50})),
            res("done", json!({})),
        ];
        assert_eq!(ota_sequence(&good, "c", "t"), Ok(OtaStatus::Done));
        let failed = [res("failed", json!({"errCode": 1400, "errMsg": "no"}))];
        assert_eq!(ota_sequence(&failed, "c", "t"), Ok(OtaStatus::Failed));
        for bad in [
            vec![
                res("ongoing", json!({"progress": 60})),
                res("ongoing", json!({"progress": 10})),
            ],
            vec![res("ongoing", json!({}))],
            vec![res("ongoing", json!({"progress": 101}))],
            vec![
                res("done", json!({})),
                res("ongoing", json!({"progress": 100})),
            ],
            vec![res("failed", json!({}))],
            vec![res("failed", json!({"errCode": 7}))],
            vec![res("ongoing", json!({"progress": 10}))],
            vec![res("finished", json!({}))],
            vec![json!({"clientToken": "x", "taskId": "t", "status": "done", "timestamp": 1})],
            vec![],
        ] {
            assert!(ota_sequence(&bad, "c", "t").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backoff_judge() {
        let ms = Duration::from_millis;
        assert!(backoff(&[ms(150), ms(300), ms(700)]).is_ok());
        assert!(backoff(&[ms(5), ms(8), ms(300)]).is_err(), "tight loop");
        assert!(backoff(&[ms(1), ms(2), ms(3)]).is_err(), "tight loop");
        // Jitter may make one pause short or a later pause shorter than the first.
        assert!(backoff(&[ms(800), ms(400), ms(100)]).is_ok());
        assert!(backoff(&[ms(20), ms(400), ms(900)]).is_ok());
        assert!(backoff(&[]).is_ok());
    }

    /// A small deterministic generator (64-bit LCG) for the strategies below.
    struct Lcg(u64);
    impl Lcg {
        fn unit(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn backoff_verdict_is_the_same_in_20_of_20_runs() {
        let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
        for run in 0..20u64 {
            let mut rng = Lcg(run * 7919 + 1);
            // Full-jitter exponential backoff (AWS style): uniform in [0, 500 ms * 2^k].
            let jittered: Vec<Duration> = (0..6)
                .map(|k| ms(rng.unit() * 500.0 * f64::from(1u32 << k)))
                .collect();
            // "Equal jitter": half fixed, half random.
            let equal: Vec<Duration> = (0..6)
                .map(|k| {
                    let base = 500.0 * f64::from(1u32 << k);
                    ms(base / 2.0 + rng.unit() * base / 2.0)
                })
                .collect();
            // A fixed 1 s retry with scheduling noise of a few ms either way.
            let fixed: Vec<Duration> = (0..6).map(|_| ms(997.0 + rng.unit() * 6.0)).collect();
            // A tight loop with noise.
            let tight: Vec<Duration> = (0..6).map(|_| ms(rng.unit() * 20.0)).collect();
            assert!(backoff(&jittered).is_ok(), "run {run}: {jittered:?}");
            assert!(backoff(&equal).is_ok(), "run {run}: {equal:?}");
            assert!(backoff(&fixed).is_ok(), "run {run}: {fixed:?}");
            assert!(backoff(&tight).is_err(), "run {run}: {tight:?}");
        }
    }
}
