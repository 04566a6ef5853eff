//! The bodies the device sends itself, written by hand with [`JsonWriter`] from the
//! `iothub_spec::payload` structs that define them (S-3.2, S-3.3, S-5.2, S-6.1, S-7.2).
//!
//! Each writer produces exactly what `serde-json-core` writes for the same struct (same members,
//! same order, `None` members left out), checked by the tests below; it only saves the
//! serde monomorphisations and the 64-bit integer formatting on a `no_std` target.

#[cfg(doc)]
use iothub_spec::payload::GetRequest;
#[cfg(feature = "methods")]
use iothub_spec::payload::MethodResponse;
#[cfg(any(doc, all(test, feature = "methods", feature = "ntp", feature = "ota")))]
use iothub_spec::payload::UpdateRequest;
#[cfg(feature = "ntp")]
use iothub_spec::payload::{NtpRequest, NtpResponse};
#[cfg(feature = "ota")]
use iothub_spec::payload::{OtaMeta, OtaResult, OtaTask};
use iothub_spec::payload::{ShadowState, field};
use serde::Serialize;

#[cfg(any(feature = "ntp", feature = "ota"))]
use crate::json::as_u64;
#[cfg(any(feature = "ntp", feature = "ota"))]
use crate::json::split_unique;
use crate::json::writer::JsonWriter;
#[cfg(feature = "ota")]
use crate::json::{self, as_raw_str, is_null};
use crate::token;

/// `"clientToken":"…"` when there is one.
#[cfg(any(feature = "methods", feature = "ota"))]
fn write_token(w: &mut JsonWriter<'_>, token: Option<&str>) {
    if let Some(t) = token {
        w.key(field::CLIENT_TOKEN);
        w.str(t);
    }
}

/// `"clientToken":"…"` with the device's own token for request `id` (see [`token::write`]).
fn write_own_token(w: &mut JsonWriter<'_>, seed: u32, id: u32) {
    w.key(field::CLIENT_TOKEN);
    token::write(w, seed, id);
}

/// [`GetRequest`] with the device's token for request `id`: `{"clientToken"}`.
pub(super) fn get_request(w: &mut JsonWriter<'_>, seed: u32, id: u32) {
    w.raw(b"{");
    write_own_token(w, seed, id);
    w.raw(b"}");
}

/// [`UpdateRequest`] with the device's token for request `id`: `{"state":S,"clientToken",
/// "version"?}`, with `S` written by `state` (the request's fields passed one by one so that one
/// copy serves every state type).
pub(super) fn update_envelope(
    w: &mut JsonWriter<'_>,
    state: &dyn Fn(&mut JsonWriter<'_>),
    seed: u32,
    id: u32,
    version: Option<u64>,
) {
    w.raw(b"{");
    w.key(field::STATE);
    state(w);
    write_own_token(w, seed, id);
    if let Some(v) = version {
        w.key(field::VERSION);
        w.u64(v);
    }
    w.raw(b"}");
}

/// [`ShadowState`] with `reported` only: `{"reported":R}`.
pub(super) fn reported_state<R: Serialize>(w: &mut JsonWriter<'_>, state: &ShadowState<(), R, ()>) {
    w.raw(b"{");
    if let Some(r) = &state.reported {
        w.key(field::REPORTED);
        w.value(r);
    }
    w.raw(b"}");
}

#[cfg(feature = "methods")]
/// [`MethodResponse`]: `{"clientToken","code","message"?,"data"?}`.
pub(super) fn method_response<D: Serialize>(w: &mut JsonWriter<'_>, body: &MethodResponse<'_, D>) {
    method_response_head(w, body.client_token, body.code, body.message);
    if let Some(d) = &body.data {
        w.key(field::DATA);
        w.value(d);
    }
    w.raw(b"}");
}

#[cfg(feature = "methods")]
/// [`MethodResponse`] without `data` (the device's own 404 for an unknown method): the same
/// bytes as [`method_response`] with `data: None`, without the code for the data it never has.
pub(super) fn method_response_without_data(
    w: &mut JsonWriter<'_>,
    token: &str,
    code: u16,
    message: Option<&str>,
) {
    method_response_head(w, token, code, message);
    w.raw(b"}");
}

#[cfg(feature = "methods")]
fn method_response_head(w: &mut JsonWriter<'_>, token: &str, code: u16, message: Option<&str>) {
    w.raw(b"{");
    write_token(w, Some(token));
    w.key(field::CODE);
    w.u64(u64::from(code));
    if let Some(m) = message {
        w.key(field::MESSAGE);
        w.str(m);
    }
}

#[cfg(feature = "ntp")]
/// [`NtpRequest`]: `{"clientSendTime":ms}`.
pub(super) fn ntp_request(w: &mut JsonWriter<'_>, body: &NtpRequest) {
    w.raw(b"{");
    w.key(field::CLIENT_SEND_TIME);
    w.u64(body.client_send_time);
    w.raw(b"}");
}

#[cfg(feature = "ota")]
/// [`OtaResult`]: `{"clientToken","taskId","status","progress"?,"errCode"?,"errMsg"?,"timestamp"}`.
pub(super) fn ota_result(w: &mut JsonWriter<'_>, body: &OtaResult<'_>) {
    w.raw(b"{");
    write_token(w, Some(body.client_token));
    w.key(field::TASK_ID);
    w.str(body.task_id);
    w.key(field::STATUS);
    w.str(body.status.as_str());
    if let Some(p) = body.progress {
        w.key(field::PROGRESS);
        w.u64(u64::from(p));
    }
    if let Some(c) = body.err_code {
        w.key(field::ERR_CODE);
        w.u64(u64::from(c));
    }
    if let Some(m) = body.err_msg {
        w.key(field::ERR_MSG);
        w.str(m);
    }
    w.key(field::TIMESTAMP);
    w.u64(body.timestamp);
    w.raw(b"}");
}

// ----- received bodies ----------------------------------------------------------------------
//
// Read with the envelope scanner instead of `serde-json-core`'s derive: same acceptance as
// `serde_json_core::from_slice` of the struct for every well-formed body (required members present
// with the right type, optional ones absent or `null`, unknown members ignored, a repeated member
// refused, strings borrowed with their escapes), checked by the tests below.

#[cfg(feature = "ota")]
/// An optional member: absent or `null` is `Ok(None)`, a wrong type is `Err(())`.
fn optional<'j, T>(raw: Option<&'j str>, read: fn(&'j str) -> Option<T>) -> Result<Option<T>, ()> {
    match raw {
        None => Ok(None),
        Some(v) if is_null(v.as_bytes()) => Ok(None),
        Some(v) => read(v).map(Some).ok_or(()),
    }
}

#[cfg(feature = "ntp")]
/// [`NtpResponse`] (S-6.1), `None` when the body is not one.
pub(super) fn ntp_response(payload: &str, max_depth: usize) -> Option<NtpResponse> {
    let [send, recv, sent] = split_unique(
        payload,
        &[
            field::CLIENT_SEND_TIME,
            field::SERVER_RECV_TIME,
            field::SERVER_SEND_TIME,
        ],
        max_depth,
    )
    .ok()?;
    Some(NtpResponse {
        client_send_time: as_u64(send?.as_bytes())?,
        server_recv_time: as_u64(recv?.as_bytes())?,
        server_send_time: as_u64(sent?.as_bytes())?,
    })
}

#[cfg(feature = "ota")]
/// [`OtaTask`] (S-7.1), `None` when the body is not one.
pub(super) fn ota_task(payload: &str, max_depth: usize) -> Option<OtaTask<'_>> {
    let [tok, task, kind, meta, url] = split_unique(
        payload,
        &[
            field::CLIENT_TOKEN,
            field::TASK_ID,
            field::TYPE,
            field::META,
            field::FILE_URL,
        ],
        max_depth,
    )
    .ok()?;
    let meta = meta.filter(|m| json::is_object(m.as_bytes()))?;
    let [version, md5, sha256, content_type, content_length] = split_unique(
        meta,
        &[
            field::VERSION,
            field::MD5,
            field::SHA256,
            field::CONTENT_TYPE,
            field::CONTENT_LENGTH,
        ],
        max_depth.saturating_sub(1),
    )
    .ok()?;
    Some(OtaTask {
        client_token: as_raw_str(tok?)?,
        task_id: as_raw_str(task?)?,
        r#type: as_raw_str(kind?)?,
        meta: OtaMeta {
            version: as_raw_str(version?)?,
            md5: optional(md5, as_raw_str).ok()?,
            sha256: optional(sha256, as_raw_str).ok()?,
            content_type: optional(content_type, as_raw_str).ok()?,
            content_length: optional(content_length, |v| as_u64(v.as_bytes())).ok()?,
        },
        file_url: as_raw_str(url?)?,
    })
}

#[cfg(test)]
#[cfg(all(feature = "methods", feature = "ntp", feature = "ota"))]
mod tests {
    use super::*;
    use iothub_spec::code::OtaStatus;
    use std::string::String;

    fn hand(f: impl Fn(&mut JsonWriter<'_>)) -> String {
        let mut buf = [0u8; 512];
        let mut w = JsonWriter::new(&mut buf);
        f(&mut w);
        let n = w.finish().unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn serde(v: &impl Serialize) -> String {
        let mut buf = [0u8; 512];
        let n = serde_json_core::to_slice(v, &mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[derive(Serialize)]
    struct State {
        a: i32,
        s: &'static str,
    }

    const ODD: &str = "t\"\\\n\u{1}é";

    #[test]
    fn get_and_update_as_serde() {
        for (seed, id) in [(0, 0), (0xdead_beef, 42), (u32::MAX, u32::MAX)] {
            let tok = std::format!("{seed:08x}-{id}");
            let client_token = Some(tok.as_str());
            let b = iothub_spec::payload::GetRequest { client_token };
            assert_eq!(hand(|w| get_request(w, seed, id)), serde(&b));
            for version in [None, Some(0), Some(u64::MAX)] {
                let state = ShadowState::<(), _, ()> {
                    desired: None,
                    reported: Some(&State { a: -3, s: "x" }),
                    delta: None,
                };
                let b = UpdateRequest {
                    state: &state,
                    client_token,
                    version,
                };
                let env = |w: &mut JsonWriter<'_>| {
                    update_envelope(w, &|w| w.value(&state), seed, id, version)
                };
                assert_eq!(hand(env), serde(&b));
                assert_eq!(hand(|w| reported_state(w, &state)), serde(&state));
            }
        }
    }

    #[test]
    fn method_response_as_serde() {
        for message in [None, Some("no such method"), Some(ODD)] {
            let b: MethodResponse<'_, ()> = MethodResponse {
                client_token: ODD,
                code: 404,
                message,
                data: None,
            };
            assert_eq!(hand(|w| method_response(w, &b)), serde(&b));
            assert_eq!(
                hand(|w| method_response_without_data(w, b.client_token, b.code, b.message)),
                serde(&b)
            );
            let b = MethodResponse {
                client_token: "abc",
                code: u16::MAX,
                message,
                data: Some(&State { a: 1, s: ODD }),
            };
            assert_eq!(hand(|w| method_response(w, &b)), serde(&b));
        }
    }

    #[test]
    fn ntp_and_ota_as_serde() {
        for t in [0, 1_700_000_000_123, u64::MAX] {
            let b = NtpRequest {
                client_send_time: t,
            };
            assert_eq!(hand(|w| ntp_request(w, &b)), serde(&b));
            for status in [
                OtaStatus::Ongoing,
                OtaStatus::Done,
                OtaStatus::Failed,
                OtaStatus::Canceled,
            ] {
                for (progress, err_code, err_msg) in [
                    (None, None, None),
                    (Some(0), None, None),
                    (Some(100), Some(0), Some(ODD)),
                    (None, Some(u16::MAX), Some("bad task")),
                ] {
                    let b = OtaResult {
                        client_token: ODD,
                        task_id: "task-1",
                        status,
                        progress,
                        err_code,
                        err_msg,
                        timestamp: t,
                    };
                    assert_eq!(hand(|w| ota_result(w, &b)), serde(&b));
                }
            }
        }
    }

    /// Well-formed bodies around S-6.1 and S-7.1: each must be accepted by the scanner exactly
    /// when `serde_json_core::from_slice` accepts it, with the same value.
    const NTP_BODIES: &[&str] = &[
        r#"{"clientSendTime":1000,"serverRecvTime":1600,"serverSendTime":1602}"#,
        r#" { "serverSendTime" : 3 , "serverRecvTime":2,"clientSendTime":18446744073709551615 } "#,
        r#"{"clientSendTime":1,"serverRecvTime":2,"serverSendTime":3,"extra":{"a":[1,"}"]}}"#,
        r#"{"clientSendTime":1,"serverRecvTime":2}"#,
        r#"{"clientSendTime":1,"serverRecvTime":2,"serverSendTime":null}"#,
        r#"{"clientSendTime":1,"serverRecvTime":2,"serverSendTime":"3"}"#,
        r#"{"clientSendTime":-1,"serverRecvTime":2,"serverSendTime":3}"#,
        r#"{"clientSendTime":1.5,"serverRecvTime":2,"serverSendTime":3}"#,
        r#"{"clientSendTime":18446744073709551616,"serverRecvTime":2,"serverSendTime":3}"#,
        r#"{"clientSendTime":1,"serverRecvTime":2,"serverSendTime":3,"clientSendTime":4}"#,
        r#"[1,2,3]"#,
        r#"{}"#,
    ];

    const OTA_BODIES: &[&str] = &[
        r#"{"clientToken":"o1","taskId":"task-1","type":"app","meta":{"version":"1.2.0","md5":"9e10","sha256":"d7a8","content-type":"application/octet-stream","content-length":1048576},"fileUrl":"https://f.example.com/fw.bin"}"#,
        r#"{"clientToken":"o1","taskId":"task-1","type":"os","meta":{"version":"2"},"fileUrl":"u"}"#,
        r#"{"fileUrl":"a\/b","meta":{"md5":null,"content-length":null,"version":"v\"1"},"type":"t","taskId":"x","clientToken":"c","more":[{}]}"#,
        r#"{"clientToken":"o1","taskId":"task-1","type":"os","meta":{"version":"2"}}"#,
        r#"{"clientToken":"o1","taskId":"task-1","type":"os","meta":{},"fileUrl":"u"}"#,
        r#"{"clientToken":"o1","taskId":"task-1","type":"os","meta":null,"fileUrl":"u"}"#,
        r#"{"clientToken":"o1","taskId":"task-1","type":"os","meta":[],"fileUrl":"u"}"#,
        r#"{"clientToken":1,"taskId":"task-1","type":"os","meta":{"version":"2"},"fileUrl":"u"}"#,
        r#"{"clientToken":"o1","taskId":"task-1","type":"os","meta":{"version":"2","md5":5},"fileUrl":"u"}"#,
        r#"{"clientToken":"o1","taskId":"task-1","type":"os","meta":{"version":"2","content-length":"5"},"fileUrl":"u"}"#,
        r#"{"clientToken":"o1","taskId":"task-1","type":"os","meta":{"version":"2","content-length":-5},"fileUrl":"u"}"#,
        r#"{"clientToken":"o1","taskId":"task-1","taskId":"t2","type":"os","meta":{"version":"2"},"fileUrl":"u"}"#,
        r#"{"clientToken":"o1","taskId":"task-1","type":"os","meta":{"version":"2","version":"3"},"fileUrl":"u"}"#,
        r#"{"clientToken":null,"taskId":"task-1","type":"os","meta":{"version":"2"},"fileUrl":"u"}"#,
    ];

    #[test]
    fn received_bodies_as_serde() {
        for body in NTP_BODIES {
            let ours = ntp_response(body, 16);
            let theirs = serde_json_core::from_slice::<NtpResponse>(body.as_bytes());
            assert_eq!(ours, theirs.ok().map(|(v, _)| v), "{body}");
        }
        for body in OTA_BODIES {
            let ours = ota_task(body, 16);
            let theirs = serde_json_core::from_slice::<OtaTask<'_>>(body.as_bytes());
            assert_eq!(ours, theirs.ok().map(|(v, _)| v), "{body}");
        }
        assert!(ntp_response(NTP_BODIES[0], 16).is_some());
        assert!(ota_task(OTA_BODIES[2], 16).is_some());
    }
}
