//! The S-7 payloads the engine sends and reads, built and parsed with the spec crate's types.

use bytes::Bytes;
use iothub_spec::payload::{OtaMeta, OtaTask, field};

use crate::store::ota::{OtaTaskRecord, OtaTemplate};

/// The S-7.1 task of `rec`'s current attempt.
pub(super) fn task_payload(t: &OtaTemplate, rec: &OtaTaskRecord) -> Option<Bytes> {
    let body = OtaTask {
        client_token: &rec.client_token,
        task_id: &rec.task_id,
        r#type: &t.task_type,
        meta: OtaMeta {
            version: &t.version,
            md5: t.md5.as_deref(),
            sha256: t.sha256.as_deref(),
            content_type: t.content_type.as_deref(),
            content_length: t.content_length,
        },
        file_url: &t.file_url,
    };
    match serde_json::to_vec(&body) {
        Ok(v) => Some(Bytes::from(v)),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an ota task");
            None
        }
    }
}

/// Splits a result payload into its `errMsg` (owned: it may hold JSON escapes, which the
/// borrowed spec type cannot) and the rest, re-encoded without it for [`iothub_spec::payload::OtaResult`].
pub(super) fn split_err_msg(payload: &[u8]) -> Option<(Option<String>, Vec<u8>)> {
    let mut v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let msg = v
        .as_object_mut()?
        .remove(field::ERR_MSG)
        .and_then(|m| m.as_str().map(str::to_owned));
    Some((msg, serde_json::to_vec(&v).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn err_msg_with_escapes_is_kept_apart() {
        let (msg, rest) = split_err_msg(
            br#"{"taskId":"t-1","clientToken":"c","status":"failed","errCode":1403,"errMsg":"bad \"md5\"","timestamp":1}"#,
        )
        .unwrap_or_default();
        assert_eq!(msg.as_deref(), Some(r#"bad "md5""#));
        let r: iothub_spec::payload::OtaResult = serde_json::from_slice(&rest).expect("typed");
        assert_eq!(
            (r.task_id, r.err_code, r.err_msg),
            ("t-1", Some(1403), None)
        );
        assert!(split_err_msg(b"not json").is_none());
    }
}
