use super::*;
use crate::code::OtaErrorCode;
use core::fmt::Debug;
use serde_json::json;

/// A typed state body, as a `no_std` device would write it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
struct Light<'a> {
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    color: Option<&'a str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    brightness: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Ts {
    timestamp: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
struct LightMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    color: Option<Ts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    brightness: Option<Ts>,
}

type State<'a> = ShadowState<Light<'a>, Light<'a>, Light<'a>>;
type Meta = ShadowState<LightMeta, LightMeta, ()>;

/// Parses `json` with serde-json-core, encodes it again, and checks that both texts are the
/// same JSON value.
fn check<'a, T>(json: &'a str) -> T
where
    T: Deserialize<'a> + Serialize + PartialEq + Debug,
{
    let (v, n): (T, usize) = serde_json_core::from_str(json).expect(json);
    assert_eq!(n, json.len());
    let mut buf = [0u8; 1024];
    let m = serde_json_core::to_slice(&v, &mut buf).expect("encode");
    let got: serde_json::Value = serde_json::from_slice(&buf[..m]).expect("re-parse");
    let want: serde_json::Value = serde_json::from_str(json).expect("example");
    assert_eq!(got, want);
    v
}

fn ts(timestamp: u64) -> Option<Ts> {
    Some(Ts { timestamp })
}

#[test]
fn get_request_s3_2() {
    let g: GetRequest = check(r#"{"clientToken":"abc"}"#);
    assert_eq!(g.client_token, Some("abc"));
    let g: GetRequest = check("{}");
    assert_eq!(g, GetRequest::default());
    // Unknown fields are ignored.
    let (g, _): (GetRequest, _) =
        serde_json_core::from_str(r#"{"x":[1,{"y":2}],"clientToken":"t"}"#).unwrap();
    assert_eq!(g.client_token, Some("t"));
}

#[test]
fn update_request_s3_3() {
    let u: UpdateRequest<State> = check(
        r#"{"state":{"desired":{"color":"red"},"reported":{"brightness":3}},"clientToken":"c1","version":7}"#,
    );
    assert_eq!(u.state.desired.unwrap().color, Some("red"));
    assert_eq!(u.state.reported.unwrap().brightness, Some(3));
    assert_eq!(u.version, Some(7));
    let u: UpdateRequest<State> = check(r#"{"state":{"reported":{"color":"blue"}}}"#);
    assert_eq!(
        (u.client_token, u.version, u.state.desired),
        (None, None, None)
    );
    // The state section is required.
    assert!(serde_json_core::from_str::<UpdateRequest<State>>(r#"{"version":1}"#).is_err());
    // Wrong types are refused.
    assert!(
        serde_json_core::from_str::<UpdateRequest<State>>(r#"{"state":{},"version":"1"}"#).is_err()
    );
    assert!(
        serde_json_core::from_str::<UpdateRequest<State>>(r#"{"state":{},"clientToken":5}"#)
            .is_err()
    );
    // With serde_json::Value a section can be cleared with null.
    let v: UpdateRequest<serde_json::Value> =
        serde_json::from_str(r#"{"state":{"desired":null}}"#).unwrap();
    assert_eq!(v.state, json!({"desired": null}));
}

#[test]
fn document_s3_2() {
    let d: ShadowDocument<State, Meta> = check(
        r#"{"state":{"desired":{"color":"red"},"reported":{"color":"blue","brightness":3},"delta":{"color":"red"}},"metadata":{"desired":{"color":{"timestamp":1700000000000}},"reported":{"color":{"timestamp":1700000000001},"brightness":{"timestamp":1700000000001}}},"version":4,"timestamp":1700000000500,"clientToken":"abc"}"#,
    );
    assert_eq!(d.version, 4);
    assert_eq!(d.state.delta.unwrap().color, Some("red"));
    assert_eq!(
        d.metadata.reported.unwrap().brightness,
        ts(1_700_000_000_001)
    );
    assert_eq!(d.client_token, Some("abc"));
    // Sections are omitted when empty.
    let d: ShadowDocument<State, Meta> = check(
        r#"{"state":{"reported":{"brightness":1}},"metadata":{"reported":{"brightness":{"timestamp":5}}},"version":1,"timestamp":6}"#,
    );
    assert!(d.state.desired.is_none() && d.state.delta.is_none());
}

#[test]
fn update_accepted_s3_5() {
    let a: UpdateAccepted<State, Meta> = check(
        r#"{"state":{"desired":{"color":"red"}},"metadata":{"desired":{"color":{"timestamp":10}}},"version":2,"timestamp":11,"clientToken":"c"}"#,
    );
    assert_eq!(a.version, 2);
    assert_eq!(a.metadata.desired.unwrap().color, ts(10));
}

#[test]
fn delta_s3_6() {
    let d: Delta<Light, LightMeta> = check(
        r#"{"state":{"color":"red"},"metadata":{"color":{"timestamp":10}},"version":3,"timestamp":12,"clientToken":"c"}"#,
    );
    assert_eq!(d.state.color, Some("red"));
    assert_eq!(d.metadata.color, ts(10));
}

#[test]
fn documents_s3_7() {
    let d: Documents<State, Meta> = check(
        r#"{"previous":{"state":{"reported":{"color":"blue"}},"metadata":{"reported":{"color":{"timestamp":1}}},"version":1},"current":{"state":{"desired":{"color":"red"},"reported":{"color":"blue"}},"metadata":{"desired":{"color":{"timestamp":2}},"reported":{"color":{"timestamp":1}}},"version":2},"timestamp":3,"clientToken":"c"}"#,
    );
    let prev = d.previous.unwrap();
    assert_eq!(prev.version + 1, d.current.version);
    // First version: previous omitted; null is read as absent too.
    let first: Documents<State, Meta> = check(
        r#"{"current":{"state":{"reported":{"color":"blue"}},"metadata":{"reported":{"color":{"timestamp":1}}},"version":1},"timestamp":1}"#,
    );
    assert!(first.previous.is_none());
    let (nul, _): (Documents<State, Meta>, _) = serde_json_core::from_str(
        r#"{"previous":null,"current":{"state":{},"metadata":{},"version":1},"timestamp":1}"#,
    )
    .unwrap();
    assert!(nul.previous.is_none());
}

#[test]
fn error_s3_8() {
    let e: ErrorResponse = check(
        r#"{"code":409,"message":"version conflict","timestamp":1700000000000,"clientToken":"abc"}"#,
    );
    assert_eq!(e.error_code(), Some(ErrorCode::Conflict));
    let e: ErrorResponse = check(r#"{"code":400,"message":"bad request","timestamp":1}"#);
    assert_eq!(e, ErrorResponse::new(ErrorCode::BadRequest, 1, None));
}

#[test]
fn methods_s5() {
    let r: MethodRequest<Light> = check(r#"{"clientToken":"m1","data":{"brightness":9}}"#);
    assert_eq!(r.data.brightness, Some(9));
    let r: MethodRequest<Option<Light>> = check(r#"{"clientToken":"m1","data":null}"#);
    assert_eq!(r.data, None);
    let resp: MethodResponse<Light> =
        check(r#"{"clientToken":"m1","code":200,"message":"ok","data":{"color":"red"}}"#);
    assert_eq!(resp.code, crate::code::method_code::OK);
    let resp: MethodResponse<Light> = check(r#"{"clientToken":"m1","code":404}"#);
    assert_eq!((resp.message, resp.data), (None, None));
    let v: MethodResponse<serde_json::Value> =
        serde_json::from_str(r#"{"clientToken":"m1","code":500,"message":"boom","data":[1,2]}"#)
            .unwrap();
    assert_eq!(v.data, Some(json!([1, 2])));
}

#[test]
fn ntp_s6() {
    let q: NtpRequest = check(r#"{"clientSendTime":1000}"#);
    assert_eq!(q.client_send_time, 1000);
    let r: NtpResponse =
        check(r#"{"clientSendTime":1000,"serverRecvTime":5000,"serverSendTime":5010}"#);
    // now = (5000 + 5010 + 1110 - 1000) / 2 = 5060; rtt = 110 - 10 = 100.
    assert_eq!(r.now_ms(1110), 5060);
    assert_eq!(r.round_trip_ms(1110), 100);
    // Odd inputs saturate instead of panicking.
    let odd = NtpResponse {
        client_send_time: u64::MAX,
        server_recv_time: 10,
        server_send_time: 5,
    };
    assert_eq!(odd.now_ms(0), 0);
    assert_eq!(odd.round_trip_ms(0), 0);
    let big = NtpResponse {
        client_send_time: 0,
        server_recv_time: u64::MAX,
        server_send_time: u64::MAX,
    };
    assert_eq!(big.now_ms(u64::MAX), u64::MAX);
    assert_eq!(big.round_trip_ms(u64::MAX), u64::MAX);
}

#[test]
fn ota_s7() {
    let t: OtaTask = check(
        r#"{"clientToken":"o1","taskId":"task-1","type":"app","meta":{"version":"1.2.0","md5":"9e107d9d372bb6826bd81d3542a419d6","sha256":"d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592","content-type":"application/octet-stream","content-length":1048576},"fileUrl":"https://files.example.com/fw-1.2.0.bin"}"#,
    );
    assert_eq!(t.r#type, "app");
    assert_eq!(t.meta.content_length, Some(1_048_576));
    assert_eq!(t.meta.content_type, Some("application/octet-stream"));
    let t: OtaTask = check(
        r#"{"clientToken":"o1","taskId":"task-1","type":"os","meta":{"version":"2"},"fileUrl":"u"}"#,
    );
    assert_eq!(t.meta.md5, None);
    let r: OtaResult = check(
        r#"{"clientToken":"o1","taskId":"task-1","status":"ongoing","progress":42,"timestamp":7}"#,
    );
    assert_eq!((r.status, r.progress), (OtaStatus::Ongoing, Some(42)));
    let r: OtaResult = check(
        r#"{"clientToken":"o1","taskId":"task-1","status":"failed","errCode":1403,"errMsg":"checksum mismatch","timestamp":8}"#,
    );
    assert_eq!(
        r.err_code.and_then(OtaErrorCode::from_u16),
        Some(OtaErrorCode::FileContentWrong)
    );
    assert!(
        serde_json_core::from_str::<OtaResult>(
            r#"{"clientToken":"o1","taskId":"t","status":"paused","timestamp":8}"#
        )
        .is_err()
    );
}

#[test]
fn events_s8() {
    let p: PresenceEvent = check(
        r#"{"thingId":"t1","clientId":"t1","eventType":"connected","timestamp":1,"remoteAddr":"10.0.0.7:51234"}"#,
    );
    assert_eq!(p.event_type, PresenceEventType::Connected);
    let p: PresenceEvent = check(
        r#"{"thingId":"t1","clientId":"t1","eventType":"disconnected","timestamp":2,"remoteAddr":"10.0.0.7:51234","disconnectReason":"keep alive timeout"}"#,
    );
    assert_eq!(p.disconnect_reason, Some("keep alive timeout"));
    let l: LifecycleEvent = check(r#"{"thingId":"t1","op":"disable","timestamp":3}"#);
    assert_eq!(l.op, LifecycleOp::Disable);
}

#[test]
fn rest_s9() {
    let r: ApiResponse<Page<[u8; 2]>> =
        check(r#"{"code":200,"message":"ok","data":{"total":7,"content":[1,2]}}"#);
    assert_eq!(r.data.unwrap().total, 7);
    let r: ApiResponse<Light> = check(r#"{"code":404,"message":"not found","data":null}"#);
    assert_eq!(r.data, None);
    let (r, _): (ApiResponse<Light>, _) =
        serde_json_core::from_str(r#"{"code":404,"message":"not found"}"#).unwrap();
    assert_eq!(r.data, None);
}

#[test]
fn field_names_match_the_structs() {
    let doc = ShadowDocument {
        state: json!({}),
        metadata: json!({}),
        version: 1,
        timestamp: 2,
        client_token: Some("c"),
    };
    let v = serde_json::to_value(doc).unwrap();
    for f in [
        field::STATE,
        field::METADATA,
        field::VERSION,
        field::TIMESTAMP,
        field::CLIENT_TOKEN,
    ] {
        assert!(v.get(f).is_some(), "{f}");
    }
    let s = serde_json::to_value(State {
        desired: Some(Light::default()),
        reported: Some(Light::default()),
        delta: Some(Light::default()),
    })
    .unwrap();
    for f in [field::DESIRED, field::REPORTED, field::DELTA] {
        assert!(s.get(f).is_some(), "{f}");
    }
    let d = serde_json::to_value(Documents {
        previous: Some(DocumentSnapshot {
            state: 0,
            metadata: 0,
            version: 0,
        }),
        current: DocumentSnapshot {
            state: 0,
            metadata: 0,
            version: 1,
        },
        timestamp: 0,
        client_token: None,
    })
    .unwrap();
    assert!(d.get(field::PREVIOUS).is_some() && d.get(field::CURRENT).is_some());
    let m = serde_json::to_value(MethodResponse {
        client_token: "c",
        code: 200,
        message: Some("ok"),
        data: Some(1),
    })
    .unwrap();
    for f in [field::CODE, field::MESSAGE, field::DATA] {
        assert!(m.get(f).is_some(), "{f}");
    }
    let n = serde_json::to_value(NtpResponse {
        client_send_time: 0,
        server_recv_time: 0,
        server_send_time: 0,
    })
    .unwrap();
    for f in [
        field::CLIENT_SEND_TIME,
        field::SERVER_RECV_TIME,
        field::SERVER_SEND_TIME,
    ] {
        assert!(n.get(f).is_some(), "{f}");
    }
    let t = serde_json::to_value(OtaTask {
        client_token: "c",
        task_id: "t",
        r#type: "app",
        meta: OtaMeta {
            version: "1",
            md5: Some("m"),
            sha256: Some("s"),
            content_type: Some("c"),
            content_length: Some(1),
        },
        file_url: "u",
    })
    .unwrap();
    for f in [
        field::CLIENT_TOKEN,
        field::TASK_ID,
        field::TYPE,
        field::META,
        field::FILE_URL,
    ] {
        assert!(t.get(f).is_some(), "{f}");
    }
    for f in [
        field::VERSION,
        field::MD5,
        field::SHA256,
        field::CONTENT_TYPE,
        field::CONTENT_LENGTH,
    ] {
        assert!(t[field::META].get(f).is_some(), "meta {f}");
    }
    let r = serde_json::to_value(OtaResult {
        client_token: "c",
        task_id: "t",
        status: OtaStatus::Failed,
        progress: Some(1),
        err_code: Some(500),
        err_msg: Some("x"),
        timestamp: 0,
    })
    .unwrap();
    for f in [
        field::TASK_ID,
        field::STATUS,
        field::PROGRESS,
        field::ERR_CODE,
        field::ERR_MSG,
    ] {
        assert!(r.get(f).is_some(), "{f}");
    }
    let p = serde_json::to_value(PresenceEvent {
        thing_id: "t",
        client_id: "t",
        event_type: PresenceEventType::Disconnected,
        timestamp: 0,
        remote_addr: "a",
        disconnect_reason: Some("r"),
    })
    .unwrap();
    for f in [
        field::THING_ID,
        field::CLIENT_ID,
        field::EVENT_TYPE,
        field::REMOTE_ADDR,
        field::DISCONNECT_REASON,
    ] {
        assert!(p.get(f).is_some(), "{f}");
    }
    let pg = serde_json::to_value(Page {
        total: 0,
        content: 0,
    })
    .unwrap();
    assert!(pg.get(field::TOTAL).is_some() && pg.get(field::CONTENT).is_some());
}
