//! Request and response bodies of the REST API, with their OpenAPI schemas (`utoipa`).
//!
//! JSON names are camelCase as everywhere on the wire; the `spec` crate has no `utoipa`, so the
//! API layer owns these mirror types and converts from the services' records.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::store::ThingRecord;
use crate::things::CreatedThing;

/// The S-9.1 envelope (documentation only; responses are built by [`super::envelope`]).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Envelope<T> {
    /// Equal to the HTTP status.
    pub code: u16,
    /// Human-readable outcome.
    pub message: String,
    /// The payload, `null` on errors.
    pub data: Option<T>,
}

/// The envelope of an error or of a success without data: `data` is `null`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NullEnvelope {
    /// Equal to the HTTP status.
    pub code: u16,
    /// Human-readable outcome.
    pub message: String,
    /// Always `null`.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

/// A page of results (S-9.2).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// Items matching, over all pages.
    pub total: u64,
    /// This page's items.
    pub content: Vec<T>,
}

/// A thing as the API shows it (S-9.2): never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Thing {
    /// The id (S-1.1).
    pub thing_id: String,
    /// Whether it may connect.
    pub enabled: bool,
    /// Free-form tags.
    #[schema(value_type = Object)]
    pub tags: Map<String, Value>,
    /// Version of the tags (for `PUT /things/{id}/tags` compare-and-swap).
    pub tags_version: u64,
    /// Whether it has a live MQTT connection (S-8.2).
    pub connected: bool,
    /// Last connect, ms since the Unix epoch.
    pub connected_at: Option<u64>,
    /// Last disconnect, ms since the Unix epoch.
    pub disconnected_at: Option<u64>,
    /// Creation time, ms since the Unix epoch.
    pub created_at: u64,
}

impl From<ThingRecord> for Thing {
    fn from(r: ThingRecord) -> Self {
        Thing {
            thing_id: r.thing_id,
            enabled: r.enabled,
            tags: r.tags,
            tags_version: r.tags_version,
            connected: r.connected,
            connected_at: r.connected_at,
            disconnected_at: r.disconnected_at,
            created_at: r.created_at,
        }
    }
}

/// A thing just created, with its secret: the only time the secret is shown (S-1.6).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedThingView {
    /// The id (S-1.1).
    pub thing_id: String,
    /// The secret (MQTT password), shown once.
    pub password: String,
    /// Whether it may connect.
    pub enabled: bool,
    /// Free-form tags.
    #[schema(value_type = Object)]
    pub tags: Map<String, Value>,
    /// Version of the tags.
    pub tags_version: u64,
    /// Whether it has a live MQTT connection.
    pub connected: bool,
    /// Creation time, ms since the Unix epoch.
    pub created_at: u64,
}

impl From<CreatedThing> for CreatedThingView {
    fn from(c: CreatedThing) -> Self {
        CreatedThingView {
            thing_id: c.thing.thing_id,
            password: c.password,
            enabled: c.thing.enabled,
            tags: c.thing.tags,
            tags_version: c.thing.tags_version,
            connected: c.thing.connected,
            created_at: c.thing.created_at,
        }
    }
}

/// `POST /things` body, and one item of a batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateThingRequest {
    /// The id; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thing_id: Option<String>,
    /// The secret; generated when absent. 1 to 256 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Initial tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tags: Option<Map<String, Value>>,
}

/// `POST /things/batch` body: `{"things":[..]}` (a bare array is accepted too).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BatchRequest {
    /// `{"things":[..]}`.
    Wrapped {
        /// Up to 1000 things.
        things: Vec<CreateThingRequest>,
    },
    /// `[..]`.
    Bare(Vec<CreateThingRequest>),
}

impl BatchRequest {
    /// The items, whichever form was sent.
    pub fn into_items(self) -> Vec<CreateThingRequest> {
        match self {
            BatchRequest::Wrapped { things } | BatchRequest::Bare(things) => things,
        }
    }
}

/// One result of a batch create, in request order.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchItem {
    /// 201 created, 400 invalid, 409 duplicate (in the store or earlier in the batch), 503.
    pub code: u16,
    /// Outcome.
    pub message: String,
    /// The requested id, when one was given or generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thing_id: Option<String>,
    /// The created thing with its secret, on success.
    pub data: Option<CreatedThingView>,
}

/// `GET /things` query string.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 0-based page number (default 0).
    pub page_index: Option<u64>,
    /// Page size, 1 to 1000 (default 20).
    pub page_size: Option<u64>,
    /// Only enabled (`true`) or disabled (`false`) things.
    pub enabled: Option<bool>,
}

/// `PATCH /things/{id}` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PatchThingRequest {
    /// Enable or disable; disabling closes the live connection (S-1.3).
    pub enabled: bool,
}

/// `PUT /things/{id}/tags` body: each key replaces that tag, `null` deletes it. The same shape
/// is the body of `PATCH /things/{id}/tags`, where `tags` is a JSON merge-patch (D-42).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TagsRequest {
    /// The tags to set (`null` values delete); for `PATCH`, the RFC 7386 merge-patch.
    #[schema(value_type = Object)]
    pub tags: Map<String, Value>,
    /// Apply only if this is the current tags version (409 otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// Tags after an update.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TagsView {
    /// All tags.
    #[schema(value_type = Object)]
    pub tags: Map<String, Value>,
    /// The new tags version.
    pub version: u64,
}

/// `POST /things/query` body (S-9.4).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryRequest {
    /// `SELECT * FROM things [WHERE ..] [ORDER BY ..]`.
    pub query: String,
    /// 0-based page number (default 0; the query string's `pageIndex` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_index: Option<u64>,
    /// Page size, 1 to 1000 (default 20; the query string's `pageSize` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u64>,
}

/// Paging in the query string of `POST /things/query`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 0-based page number.
    pub page_index: Option<u64>,
    /// Page size, 1 to 1000.
    pub page_size: Option<u64>,
}

/// `POST /things/{id}/methods/{method}` body (S-9.5).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MethodRequest {
    /// Sent to the device as the request's `data`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Value,
    /// Seconds to wait for the device's answer, 1 to 300 (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Seconds to wait for an offline thing to connect, 0 to 300 (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<f64>,
    /// tio's name for `timeout`; `0` means the default, as in tio. Give one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp_timeout: Option<f64>,
    /// tio's name for `connectTimeout`. Give one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_timeout: Option<f64>,
}

impl MethodRequest {
    /// `timeout`, or tio's `respTimeout` (where `0` means the default); 400 when both are given.
    pub fn response_timeout(&self) -> Result<Option<f64>, String> {
        match (self.timeout, self.resp_timeout) {
            (Some(_), Some(_)) => Err("give timeout or respTimeout, not both".into()),
            (Some(t), None) => Ok(Some(t)),
            (None, Some(0.0)) => Ok(None),
            (None, t) => Ok(t),
        }
    }

    /// `connectTimeout`, or tio's `connTimeout`; 400 when both are given.
    pub fn connect_timeout(&self) -> Result<Option<f64>, String> {
        match (self.connect_timeout, self.conn_timeout) {
            (Some(_), Some(_)) => Err("give connectTimeout or connTimeout, not both".into()),
            (t, None) | (None, t) => Ok(t),
        }
    }
}

/// The device's answer to a direct method (S-5.2).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MethodResult {
    /// The device's status code.
    pub code: u16,
    /// The device's message.
    pub message: String,
    /// The device's data.
    #[schema(value_type = Object)]
    pub data: Value,
}

/// `PUT /things/{id}/shadows/{name}/state/desired` body (S-9.3, documentation only: the raw body
/// goes to the shadow pipeline, which validates it as an S-3.3 update).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DesiredRequest {
    /// `{"desired":{..}}`.
    #[schema(value_type = Object)]
    pub state: Value,
    /// Echoed in the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    /// Apply only at this shadow version (409 otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// `GET /healthz` data.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `ok` when the store answers and its writes succeed, `unavailable` otherwise.
    pub status: String,
    /// Why the store is unavailable (e.g. `database or disk is full`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when writes fail, ms since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<u64>,
    /// Write transactions that failed since the hub started.
    pub write_failures: u64,
    /// How many of the 64 partitions of things this instance handles: all of them with one
    /// instance, a share with several on one broker and database (D-73).
    pub partitions: u32,
    /// Whether this instance runs the fleet engines (configurations, jobs, OTA rollouts): the
    /// only instance, or the one holding partition 0 (D-73).
    pub leader: bool,
}

impl Health {
    /// The health view of the store's `report` with `status`.
    pub fn from_report(status: &str, report: &crate::store::health::HealthReport) -> Health {
        Health {
            status: status.to_owned(),
            reason: report.reason.clone(),
            failing_since: report.failing_since,
            write_failures: report.write_failures,
            partitions: 64,
            leader: true,
        }
    }
}
