//! The hub's client of the external registry's HTTP contract (S-13.3): list devices page by
//! page, create one, delete one, each with its own header.
//!
//! The contract's types live here, not in `spec/`: `spec` is `no_std` without `alloc` (its types
//! are what devices speak), while this contract is spoken only between the hub and an adapter,
//! with lists and maps of any size. Everything the external registry answers is untrusted: a
//! body is read up to [`MAX_BODY`], every device checked, and every failure a typed
//! [`ClientError`] that says whether a retry may help.

use std::collections::BTreeMap;
use std::time::Duration;

use iothub_spec::ids::is_valid_thing_id;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::config::{Header, SyncConfig};

/// Largest body read from the external registry (one page of devices).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// Longest page cursor accepted.
pub const MAX_CURSOR: usize = 1024;
/// Longest part of an error body kept in an error.
const ERROR_EXCERPT: usize = 200;

/// Why a call to the external registry failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No connection, or it broke.
    #[error("external registry unreachable: {0}")]
    Unreachable(String),
    /// No complete answer within the timeout.
    #[error("external registry timed out after {0:?}")]
    Timeout(Duration),
    /// An answer with a status the contract does not allow here.
    #[error("external registry answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// An answer that breaks the contract (bad JSON, too large, a repeated cursor, ...).
    #[error("invalid answer from the external registry: {0}")]
    Invalid(String),
}

impl ClientError {
    /// Whether trying again later may succeed: connection failures, timeouts, 408, 429 and
    /// 5xx. Any other refusal (a 4xx) will be refused again.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable(_) | ClientError::Timeout(_) => true,
            ClientError::Status { status, .. } => {
                *status == 408 || *status == 429 || *status >= 500
            }
            ClientError::Invalid(_) => false,
        }
    }
}

/// A device as the external registry lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The device's id, which is the thing's id (S-1.1).
    pub id: String,
    /// Its tags, merged over the template's.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub tags: Map<String, Value>,
}

/// Every device of the external registry, and the entries that could not be read as one.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Valid devices by id.
    pub devices: BTreeMap<String, Device>,
    /// `(what identifies the entry, why it was refused)`.
    pub refused: Vec<Refused>,
}

/// One page of `GET /devices`.
#[derive(Debug, Deserialize)]
struct Page {
    devices: Vec<Value>,
    #[serde(default)]
    next: Option<String>,
}

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    devices_url: String,
    timeout: Duration,
    page_size: u32,
    max_devices: usize,
    list: Option<Header>,
    create: Option<Header>,
    delete: Option<Header>,
}

impl Client {
    /// A client of the registry `config` names.
    pub fn new(config: &SyncConfig) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // The adapter is the hub's neighbour: no proxy from the environment in between.
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        Ok(Client {
            http,
            devices_url: format!("{}/devices", config.url.trim_end_matches('/')),
            timeout: config.timeout,
            page_size: config.page_size,
            max_devices: config.max_devices,
            list: config.auth.list.clone(),
            create: config.auth.create.clone(),
            delete: config.auth.delete.clone(),
        })
    }

    /// Every device, page by page. Any failure fails the whole listing: a partial list must
    /// never be taken for the registry's content (the scheduled sync would delete the rest).
    pub async fn list_all(&self) -> Result<Listing, ClientError> {
        let mut listing = Listing::default();
        let mut cursor: Option<String> = None;
        let mut seen_cursors = std::collections::HashSet::new();
        loop {
            let mut req = self
                .http
                .get(&self.devices_url)
                .query(&[("limit", self.page_size.to_string())]);
            if let Some(c) = &cursor {
                req = req.query(&[("cursor", c)]);
            }
            let (status, body) = self.send(req, self.list.as_ref()).await?;
            if status != StatusCode::OK {
                return Err(status_error(status, &body));
            }
            let (entries, next) = parse_page(&body)?;
            for entry in entries {
                match entry {
                    Ok(device) => {
                        listing.devices.insert(device.id.clone(), device);
                    }
                    Err(refused) => listing.refused.push(refused),
                }
                if listing.devices.len() + listing.refused.len() > self.max_devices {
                    return Err(ClientError::Invalid(format!(
                        "more than max_devices = {} devices",
                        self.max_devices
                    )));
                }
            }
            match next {
                None => return Ok(listing),
                Some(next) => {
                    if !seen_cursors.insert(next.clone()) {
                        return Err(ClientError::Invalid(format!("cursor {next:?} repeated")));
                    }
                    cursor = Some(next);
                }
            }
        }
    }

    /// Creates a device; one that exists already (409) counts as created.
    pub async fn create(&self, device: &Device) -> Result<(), ClientError> {
        let req = self.http.post(&self.devices_url).json(device);
        let (status, body) = self.send(req, self.create.as_ref()).await?;
        match status {
            StatusCode::OK | StatusCode::CREATED | StatusCode::CONFLICT => Ok(()),
            other => Err(status_error(other, &body)),
        }
    }

    /// Deletes a device; one that does not exist (404) counts as deleted.
    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        if !is_valid_thing_id(id) {
            return Err(ClientError::Invalid(format!("thing id {id:?}")));
        }
        let req = self.http.delete(format!("{}/{id}", self.devices_url));
        let (status, body) = self.send(req, self.delete.as_ref()).await?;
        match status {
            StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(()),
            other => Err(status_error(other, &body)),
        }
    }

    /// Sends `req` with `header` and reads the whole answer, up to [`MAX_BODY`], within the
    /// timeout (reqwest's covers the body too; the outer one is a second guard).
    async fn send(
        &self,
        mut req: reqwest::RequestBuilder,
        header: Option<&Header>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        if let Some(h) = header {
            req = req.header(h.name.as_str(), h.value.as_str());
        }
        let exchange = async {
            let mut resp = req.send().await.map_err(|e| self.transport(&e))?;
            let status = resp.status();
            if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
                return Err(ClientError::Invalid("answer too large".into()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(&e))? {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(ClientError::Invalid("answer too large".into()));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout + Duration::from_secs(1), exchange)
            .await
            .unwrap_or(Err(ClientError::Timeout(self.timeout)))
    }

    fn transport(&self, e: &reqwest::Error) -> ClientError {
        if e.is_timeout() {
            ClientError::Timeout(self.timeout)
        } else {
            // The source chain says why (refused, reset, ...); reqwest's own text does not.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            ClientError::Unreachable(text)
        }
    }
}

fn status_error(status: StatusCode, body: &[u8]) -> ClientError {
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text.chars().take(ERROR_EXCERPT).collect();
    ClientError::Status {
        status: status.as_u16(),
        body: excerpt,
    }
}

/// A refused entry of a page: what identifies it, and why.
pub type Refused = (Option<String>, String);

/// A parsed page: each entry as a device or refused, and the next cursor (`None` at the end).
pub type ParsedPage = (Vec<Result<Device, Refused>>, Option<String>);

/// One page of `GET /devices`. Any body is accepted without panicking; one that is not a page
/// is an error.
pub fn parse_page(body: &[u8]) -> Result<ParsedPage, ClientError> {
    let page: Page = serde_json::from_slice(body)
        .map_err(|e| ClientError::Invalid(format!("device page: {e}")))?;
    let next = match page.next {
        Some(next) if next.len() > MAX_CURSOR => {
            return Err(ClientError::Invalid("cursor too long".into()));
        }
        Some(next) if !next.is_empty() => Some(next),
        _ => None,
    };
    Ok((page.devices.into_iter().map(check_device).collect(), next))
}

/// A listed entry as a [`Device`], or what identifies it and why it was refused.
fn check_device(entry: Value) -> Result<Device, Refused> {
    let id = entry.get("id").and_then(Value::as_str).map(str::to_owned);
    let device: Device =
        serde_json::from_value(entry).map_err(|e| (id.clone(), format!("not a device: {e}")))?;
    if !is_valid_thing_id(&device.id) {
        return Err((
            Some(device.id.chars().take(80).collect()),
            "the id is not a valid thingId (S-1.1)".into(),
        ));
    }
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_transient_failures_are_retried() {
        for status in [408, 429, 500, 502, 503] {
            let e = ClientError::Status {
                status,
                body: String::new(),
            };
            assert!(e.is_transient(), "{status}");
        }
        for status in [400, 401, 403, 422] {
            let e = ClientError::Status {
                status,
                body: String::new(),
            };
            assert!(!e.is_transient(), "{status}");
        }
        assert!(ClientError::Timeout(Duration::from_secs(1)).is_transient());
        assert!(!ClientError::Invalid("x".into()).is_transient());
    }

    #[test]
    fn listed_devices_are_checked_one_by_one() {
        assert_eq!(
            check_device(json!({"id": "d-1", "tags": {"a": 1}})).map(|d| d.id),
            Ok("d-1".into())
        );
        assert!(check_device(json!({"id": "bad id"})).is_err());
        assert!(check_device(json!({"id": "d", "tags": [1]})).is_err());
        assert_eq!(
            check_device(json!({"name": "x"})).map_err(|e| e.0),
            Err(None)
        );
    }

    #[test]
    fn pages_end_and_go_on() {
        let (entries, next) =
            parse_page(br#"{"devices":[{"id":"a"},{"id":"b c"}],"next":"2"}"#).expect("a page");
        assert_eq!(entries.len(), 2);
        assert!(entries[0].is_ok() && entries[1].is_err());
        assert_eq!(next.as_deref(), Some("2"));
        for end in [
            r#"{"devices":[]}"#,
            r#"{"devices":[],"next":null}"#,
            r#"{"devices":[],"next":""}"#,
        ] {
            assert_eq!(parse_page(end.as_bytes()).map(|p| p.1), Ok(None), "{end}");
        }
        let long = format!(
            r#"{{"devices":[],"next":"{}"}}"#,
            "x".repeat(MAX_CURSOR + 1)
        );
        assert!(parse_page(long.as_bytes()).is_err());
        assert!(parse_page(b"[]").is_err());
    }

    proptest::proptest! {
        /// Whatever the external registry answers, parsing never panics.
        #[test]
        fn any_body_parses_or_is_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse_page(&body);
        }

        /// A device is kept exactly when its id is a valid thingId.
        #[test]
        fn devices_are_kept_by_their_ids(ids in proptest::collection::vec("[ -~]{0,70}", 0..20)) {
            let devices: Vec<Value> = ids.iter().map(|id| json!({"id": id})).collect();
            let body = serde_json::to_vec(&json!({"devices": devices})).expect("json");
            let (entries, next) = parse_page(&body).expect("a page");
            proptest::prop_assert!(next.is_none());
            for (id, entry) in ids.iter().zip(entries) {
                proptest::prop_assert_eq!(entry.is_ok(), is_valid_thing_id(id));
            }
        }
    }
}
