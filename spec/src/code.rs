//! Numeric codes and enumerated strings of the wire: shadow error codes (S-3.8), method codes
//! (S-5.2), OTA codes and states (S-7), presence and lifecycle events (S-8).

use core::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The error codes of `get/rejected` and `update/rejected` (S-3.8), also used as HTTP statuses by
/// the REST API (S-9).
///
/// Use it wherever the hub refuses a request; the number goes on the wire as
/// [`crate::payload::ErrorResponse::code`]. Serializes as the bare number.
#[repr(u16)]
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: malformed JSON, wrong types, depth over the limit, clientToken too long, no state.
    BadRequest = 400,
    /// 403: not allowed (S-2.1, named shadow quota).
    Forbidden = 403,
    /// 404: no such shadow (`get`), thing or method.
    NotFound = 404,
    /// 409: version conflict (S-3.4), thing already exists, thing offline (S-5.3).
    Conflict = 409,
    /// 413: payload or resulting document over the limit (S-3.9).
    PayloadTooLarge = 413,
    /// 415: payload is not UTF-8.
    UnsupportedMediaType = 415,
    /// 429: rate or in-flight limit per thing exceeded.
    TooManyRequests = 429,
    /// 500: internal error.
    Internal = 500,
    /// 503: storage unavailable, retry later.
    Unavailable = 503,
    /// 504: the device did not answer a direct method in time (S-5.3).
    GatewayTimeout = 504,
}

impl ErrorCode {
    /// Every code, in ascending order; handy for tests and documentation.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::TooManyRequests,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::GatewayTimeout,
    ];

    /// The number sent on the wire and used as HTTP status.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a number received on the wire, `None` for a number this spec does not define.
    pub fn from_u16(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_u16() == code)
    }

    /// A short lowercase message for the code, used as `message` when nothing more specific is
    /// known.
    pub const fn default_message(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not found",
            ErrorCode::Conflict => "version conflict",
            ErrorCode::PayloadTooLarge => "payload too large",
            ErrorCode::UnsupportedMediaType => "payload is not utf-8",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::Internal => "internal error",
            ErrorCode::Unavailable => "service unavailable, retry later",
            ErrorCode::GatewayTimeout => "device did not answer in time",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.as_u16(), self.default_message())
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> u16 {
        code.as_u16()
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.as_u16())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u16::deserialize(deserializer)?;
        Self::from_u16(n).ok_or_else(|| serde::de::Error::custom("unknown error code"))
    }
}

/// The `code` values of a direct-method response that the spec names (S-5.2).
///
/// Devices may use other HTTP-like codes; these are the ones SDKs produce themselves.
pub mod method_code {
    /// The method ran.
    pub const OK: u16 = 200;
    /// The method refused its input.
    pub const BAD_INPUT: u16 = 400;
    /// No such method on the device; SDKs answer it for unregistered methods.
    pub const NOT_FOUND: u16 = 404;
    /// The method failed on the device.
    pub const DEVICE_ERROR: u16 = 500;
}

/// The `errCode` of a failed OTA result (S-7.2).
///
/// Devices put [`OtaErrorCode::as_u16`] in [`crate::payload::OtaResult::err_code`]; the hub maps
/// received numbers back with [`OtaErrorCode::from_u16`]. Serializes as the bare number.
#[repr(u16)]
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtaErrorCode {
    /// 400: the task is malformed or not applicable.
    BadTask = 400,
    /// 500: unknown failure.
    Unknown = 500,
    /// 1400: the file URL cannot be used (unreachable, refused, not found).
    FileUrlUnusable = 1400,
    /// 1403: the file content is wrong (checksum mismatch).
    FileContentWrong = 1403,
    /// 1404: no space on the device.
    NoSpace = 1404,
}

impl OtaErrorCode {
    const ALL: [OtaErrorCode; 5] = [
        OtaErrorCode::BadTask,
        OtaErrorCode::Unknown,
        OtaErrorCode::FileUrlUnusable,
        OtaErrorCode::FileContentWrong,
        OtaErrorCode::NoSpace,
    ];

    /// The number sent on the wire.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a received number, `None` for a number the spec does not define.
    pub fn from_u16(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_u16() == code)
    }
}

impl Serialize for OtaErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.as_u16())
    }
}

impl<'de> Deserialize<'de> for OtaErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u16::deserialize(deserializer)?;
        Self::from_u16(n).ok_or_else(|| serde::de::Error::custom("unknown ota error code"))
    }
}

/// The `status` a device reports in an OTA result (S-7.2): `"ongoing"`, `"done"`, `"failed"`,
/// `"canceled"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtaStatus {
    /// Downloading or installing; `progress` accompanies it.
    Ongoing,
    /// Installed.
    Done,
    /// Failed; `errCode` and `errMsg` accompany it.
    Failed,
    /// The device canceled the task.
    Canceled,
}

impl OtaStatus {
    /// The wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            OtaStatus::Ongoing => "ongoing",
            OtaStatus::Done => "done",
            OtaStatus::Failed => "failed",
            OtaStatus::Canceled => "canceled",
        }
    }

    /// Whether no further result is expected after this one.
    pub const fn is_final(self) -> bool {
        !matches!(self, OtaStatus::Ongoing)
    }
}

/// The state of one OTA task inside a hub job (S-7.3), as stored and shown by the REST API:
/// `"queued"`, `"sent"`, `"ongoing"`, `"done"`, `"failed"`, `"canceled"`, `"timed_out"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtaTaskState {
    /// Waiting for the job's rollout rate or for the thing to connect.
    Queued,
    /// Published on `T/ota/task`, no result yet.
    Sent,
    /// The device reported `ongoing`.
    Ongoing,
    /// The device reported `done`.
    Done,
    /// The device reported `failed`.
    Failed,
    /// The job was canceled, or the device reported `canceled`.
    Canceled,
    /// No final result arrived within the job's timeout.
    TimedOut,
}

impl OtaTaskState {
    /// Every state, in lifecycle order (S-7.3).
    pub const ALL: [OtaTaskState; 7] = [
        OtaTaskState::Queued,
        OtaTaskState::Sent,
        OtaTaskState::Ongoing,
        OtaTaskState::Done,
        OtaTaskState::Failed,
        OtaTaskState::Canceled,
        OtaTaskState::TimedOut,
    ];

    /// The state a wire string names, `None` for any other string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            OtaTaskState::Queued => "queued",
            OtaTaskState::Sent => "sent",
            OtaTaskState::Ongoing => "ongoing",
            OtaTaskState::Done => "done",
            OtaTaskState::Failed => "failed",
            OtaTaskState::Canceled => "canceled",
            OtaTaskState::TimedOut => "timed_out",
        }
    }

    /// Whether the task has ended (done, failed, canceled or timed out).
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            OtaTaskState::Done
                | OtaTaskState::Failed
                | OtaTaskState::Canceled
                | OtaTaskState::TimedOut
        )
    }
}

impl From<OtaStatus> for OtaTaskState {
    fn from(status: OtaStatus) -> Self {
        match status {
            OtaStatus::Ongoing => OtaTaskState::Ongoing,
            OtaStatus::Done => OtaTaskState::Done,
            OtaStatus::Failed => OtaTaskState::Failed,
            OtaStatus::Canceled => OtaTaskState::Canceled,
        }
    }
}

/// The state of one thing inside a fleet job (S-12.3), as stored and shown by the REST API:
/// `"queued"`, `"in_progress"`, `"succeeded"`, `"failed"`, `"timed_out"`, `"canceled"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobThingState {
    /// Not reached yet: waiting for the start time, the rate, a retry or the thing to connect.
    Queued,
    /// The operation was sent (a method call awaits its answer).
    InProgress,
    /// The operation took effect (a method answered with a 2xx code).
    Succeeded,
    /// The operation was refused: the device's method code, or the hub's refusal.
    Failed,
    /// No answer within the timeout on the last attempt, or not reached before the job's end.
    TimedOut,
    /// The job was canceled before the thing was reached.
    Canceled,
}

impl JobThingState {
    /// Every state, in lifecycle order (S-12.3).
    pub const ALL: [JobThingState; 6] = [
        JobThingState::Queued,
        JobThingState::InProgress,
        JobThingState::Succeeded,
        JobThingState::Failed,
        JobThingState::TimedOut,
        JobThingState::Canceled,
    ];

    /// The state a wire string names, `None` for any other string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobThingState::Queued => "queued",
            JobThingState::InProgress => "in_progress",
            JobThingState::Succeeded => "succeeded",
            JobThingState::Failed => "failed",
            JobThingState::TimedOut => "timed_out",
            JobThingState::Canceled => "canceled",
        }
    }

    /// Whether the thing is done with (succeeded, failed, timed out or canceled).
    pub const fn is_final(self) -> bool {
        !matches!(self, JobThingState::Queued | JobThingState::InProgress)
    }
}

/// The status of a fleet job (S-12.2): `"scheduled"`, `"running"`, `"completed"`, `"canceled"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its start time.
    Scheduled,
    /// Reaching its things.
    Running,
    /// Every thing is in a final state.
    Completed,
    /// Canceled: things not yet reached are `canceled`.
    Canceled,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 4] = [
        JobStatus::Scheduled,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Canceled,
    ];

    /// The status a wire string names, `None` for any other string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Scheduled => "scheduled",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Canceled => "canceled",
        }
    }

    /// Whether the job has ended.
    pub const fn is_final(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Canceled)
    }
}

/// The `eventType` of a presence event (S-8.1): `"connected"` or `"disconnected"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceEventType {
    /// The thing connected.
    Connected,
    /// The thing disconnected (or its connection was closed or taken over).
    Disconnected,
}

impl PresenceEventType {
    /// The wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            PresenceEventType::Connected => "connected",
            PresenceEventType::Disconnected => "disconnected",
        }
    }
}

/// The `op` of a lifecycle event (S-8.3): `"create"`, `"delete"`, `"enable"`, `"disable"`, and
/// `"provision"` (S-10.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LifecycleOp {
    /// The thing was created.
    Create,
    /// The thing was deleted.
    Delete,
    /// The thing was enabled.
    Enable,
    /// The thing was disabled.
    Disable,
    /// The thing was provisioned over MQTT (S-10.4): created, or given a new secret.
    Provision,
}

impl LifecycleOp {
    /// The wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            LifecycleOp::Create => "create",
            LifecycleOp::Delete => "delete",
            LifecycleOp::Enable => "enable",
            LifecycleOp::Disable => "disable",
            LifecycleOp::Provision => "provision",
        }
    }
}

/// The kind of a registry sync event (S-13.5), as stored and listed by
/// `GET /api/v1/sync/events`: what the hub did to the external registry (`external-*`) or to
/// itself because of it (`hub-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncEventKind {
    /// A thing was created in the external registry.
    ExternalCreated,
    /// Creating a thing in the external registry failed; the task will be retried.
    ExternalCreateError,
    /// Creating a thing in the external registry was given up (attempts, deadline or refusal).
    ExternalCreateFailed,
    /// A thing was deleted from the external registry.
    ExternalDeleted,
    /// Deleting a thing from the external registry failed; the task will be retried.
    ExternalDeleteError,
    /// Deleting a thing from the external registry was given up.
    ExternalDeleteFailed,
    /// The scheduled sync created a thing in the hub.
    HubCreated,
    /// The scheduled sync deleted a thing from the hub.
    HubDeleted,
    /// The scheduled sync disabled a thing of the hub (soft delete).
    HubDisabled,
    /// An external device could not become a thing: its id, its tags with the template's, or
    /// the template's desired state was refused.
    TemplateCheckFailed,
}

impl SyncEventKind {
    /// Every kind, in the order of S-13.5.
    pub const ALL: [SyncEventKind; 10] = [
        SyncEventKind::ExternalCreated,
        SyncEventKind::ExternalCreateError,
        SyncEventKind::ExternalCreateFailed,
        SyncEventKind::ExternalDeleted,
        SyncEventKind::ExternalDeleteError,
        SyncEventKind::ExternalDeleteFailed,
        SyncEventKind::HubCreated,
        SyncEventKind::HubDeleted,
        SyncEventKind::HubDisabled,
        SyncEventKind::TemplateCheckFailed,
    ];

    /// The kind a wire string names, `None` for any other string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            SyncEventKind::ExternalCreated => "external-created",
            SyncEventKind::ExternalCreateError => "external-create-error",
            SyncEventKind::ExternalCreateFailed => "external-create-failed",
            SyncEventKind::ExternalDeleted => "external-deleted",
            SyncEventKind::ExternalDeleteError => "external-delete-error",
            SyncEventKind::ExternalDeleteFailed => "external-delete-failed",
            SyncEventKind::HubCreated => "hub-created",
            SyncEventKind::HubDeleted => "hub-deleted",
            SyncEventKind::HubDisabled => "hub-disabled",
            SyncEventKind::TemplateCheckFailed => "template-check-failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ser<T: Serialize>(v: &T) -> heapless::String<64> {
        let mut buf = [0u8; 64];
        let n = serde_json_core::to_slice(v, &mut buf).unwrap();
        heapless::String::try_from(core::str::from_utf8(&buf[..n]).unwrap()).unwrap()
    }

    #[test]
    fn sync_event_kinds_round_trip() {
        for k in SyncEventKind::ALL {
            assert_eq!(SyncEventKind::parse(k.as_str()), Some(k));
            assert_eq!(ser(&k).as_str(), &*alloc_free_quote(k.as_str()));
        }
        assert_eq!(SyncEventKind::parse("hub_created"), None);
    }

    fn alloc_free_quote(s: &str) -> heapless::String<64> {
        let mut out = heapless::String::new();
        let _ = out.push('"');
        let _ = out.push_str(s);
        let _ = out.push('"');
        out
    }

    #[test]
    fn job_states_round_trip() {
        for s in JobThingState::ALL {
            assert_eq!(JobThingState::parse(s.as_str()), Some(s));
            assert_eq!(ser(&s).as_str().trim_matches('"'), s.as_str());
        }
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobThingState::parse("timed-out"), None);
        assert!(JobThingState::TimedOut.is_final() && !JobThingState::InProgress.is_final());
    }

    #[test]
    fn error_codes_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(c.as_u16()), Some(c));
            let s = ser(&c);
            assert_eq!(s.parse::<u16>().unwrap(), c.as_u16());
            let (back, _): (ErrorCode, _) = serde_json_core::from_str(&s).unwrap();
            assert_eq!(back, c);
            let m = c.default_message();
            assert!(!m.is_empty());
            assert_eq!(m, m.to_ascii_lowercase());
        }
        assert_eq!(ErrorCode::from_u16(200), None);
        assert!(serde_json_core::from_str::<ErrorCode>("418").is_err());
        assert_eq!(ErrorCode::Conflict.as_u16(), 409);
    }

    #[test]
    fn ota_codes() {
        for c in OtaErrorCode::ALL {
            assert_eq!(OtaErrorCode::from_u16(c.as_u16()), Some(c));
        }
        assert_eq!(OtaErrorCode::NoSpace.as_u16(), 1404);
        assert_eq!(ser(&OtaErrorCode::FileContentWrong).as_str(), "1403");
    }

    #[test]
    fn enum_strings() {
        assert_eq!(ser(&OtaStatus::Canceled).as_str(), "\"canceled\"");
        assert_eq!(ser(&OtaTaskState::TimedOut).as_str(), "\"timed_out\"");
        assert_eq!(
            ser(&PresenceEventType::Disconnected).as_str(),
            "\"disconnected\""
        );
        assert_eq!(ser(&LifecycleOp::Enable).as_str(), "\"enable\"");
        for s in OtaTaskState::ALL {
            let j = ser(&s);
            assert_eq!(&j[1..j.len() - 1], s.as_str());
            assert_eq!(OtaTaskState::parse(s.as_str()), Some(s));
            let (back, _): (OtaTaskState, _) = serde_json_core::from_str(&j).unwrap();
            assert_eq!(back, s);
        }
        for s in [
            OtaStatus::Ongoing,
            OtaStatus::Done,
            OtaStatus::Failed,
            OtaStatus::Canceled,
        ] {
            let j = ser(&s);
            assert_eq!(&j[1..j.len() - 1], s.as_str());
            assert_eq!(OtaTaskState::from(s).as_str(), s.as_str());
        }
        for o in [
            LifecycleOp::Create,
            LifecycleOp::Delete,
            LifecycleOp::Enable,
            LifecycleOp::Disable,
        ] {
            let j = ser(&o);
            assert_eq!(&j[1..j.len() - 1], o.as_str());
        }
        assert!(serde_json_core::from_str::<OtaStatus>("\"Done\"").is_err());
    }
}
