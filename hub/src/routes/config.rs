//! A route's definition (S-14.1): the same shape in the config file's `[[routes]]` tables (snake
//! case keys also accepted there) and in the REST API's JSON, validated once, here, with typed
//! errors.

use std::collections::BTreeMap;

use iothub_spec::topic::is_valid_filter;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::query::ThingQuery;

/// Most routes a hub holds.
pub const MAX_ROUTES: usize = 64;
/// Largest outbox a route may ask for.
pub const MAX_OUTBOX: u64 = 10_000_000;
/// Most custom headers of a webhook.
pub const MAX_HEADERS: usize = 32;
/// What `secret` reads as in the API's answers (it is never shown).
pub const REDACTED: &str = "****";

/// Where a route takes messages from (S-14.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// `T/messages/property` from the thing.
    Telemetry,
    /// `$iothub/user/things/{id}/...` from the thing.
    Messages,
    /// `S/update/documents` after every accepted shadow update.
    Shadow,
    /// Lifecycle events (S-8.3).
    Lifecycle,
    /// Presence events (S-8.1).
    Presence,
    /// OTA task results from the thing (S-7).
    OtaResults,
    /// Direct method answers from the thing (S-5).
    MethodResults,
}

impl Source {
    /// The name used on the wire and in the outbox.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Telemetry => "telemetry",
            Source::Messages => "messages",
            Source::Shadow => "shadow",
            Source::Lifecycle => "lifecycle",
            Source::Presence => "presence",
            Source::OtaResults => "ota-results",
            Source::MethodResults => "method-results",
        }
    }

    /// Whether a message of this source comes from a device's PUBLISH (and so can be refused
    /// with its PUBACK); the others are the hub's own.
    pub fn from_device(self) -> bool {
        matches!(
            self,
            Source::Telemetry | Source::Messages | Source::OtaResults | Source::MethodResults
        )
    }
}

/// What a full outbox does with one more message (S-14.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Delete the route's oldest message (counted as dropped) to make room.
    #[default]
    DropOldest,
    /// Refuse the new message: the device's PUBLISH fails (MQTT 5 PUBACK 0x97).
    Refuse,
}

/// Where a route delivers (S-14.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Sink {
    /// POST of JSON batches.
    #[serde(rename_all = "camelCase")]
    Webhook {
        /// `http://` or `https://` URL.
        url: String,
        /// Key of the `X-Iothub-Signature: sha256=<hex HMAC-SHA256 of the body>` header; no
        /// header without one. Answers show it as `****`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
        /// Extra request headers.
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Milliseconds one POST may take, 100 to 60,000 (default 5,000).
        #[serde(default = "default_timeout", alias = "timeout_ms")]
        timeout_ms: u64,
    },
    /// JSON lines appended to a file, rotated by size.
    #[serde(rename_all = "camelCase")]
    File {
        /// The file; rotated ones get `.1`, `.2`, ... (the newest is `.1`).
        path: String,
        /// Rotate once the file reaches this many bytes (default 64 MiB, at least 1 KiB).
        #[serde(default = "default_file_bytes", alias = "max_bytes")]
        max_bytes: u64,
        /// Rotated files kept, 1 to 100 (default 5).
        #[serde(default = "default_keep")]
        keep: u32,
    },
    /// JSON lines on the hub's standard output.
    Stdout {},
    /// QoS 1 publishes to another MQTT broker (a bridge).
    #[serde(rename_all = "camelCase")]
    Mqtt {
        /// `mqtt://host[:port]` or `mqtts://host[:port]` (TLS).
        url: String,
        /// Client identifier (default `iothub-route-{id}`).
        #[serde(default, skip_serializing_if = "Option::is_none", alias = "client_id")]
        client_id: Option<String>,
        /// User name on the broker.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        /// Password on the broker; answers show it as `****`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        /// Put before each message's topic (default none).
        #[serde(default, alias = "topic_prefix")]
        topic_prefix: String,
        /// CA certificates (PEM) for `mqtts://`; the system's roots without it.
        #[serde(default, skip_serializing_if = "Option::is_none", alias = "ca_file")]
        ca_file: Option<String>,
        /// Client certificate chain (PEM) for `mqtts://`, with `keyFile`.
        #[serde(default, skip_serializing_if = "Option::is_none", alias = "cert_file")]
        cert_file: Option<String>,
        /// Its private key (PEM).
        #[serde(default, skip_serializing_if = "Option::is_none", alias = "key_file")]
        key_file: Option<String>,
        /// Milliseconds a batch may take until every PUBACK, 100 to 60,000 (default 5,000).
        #[serde(default = "default_timeout", alias = "timeout_ms")]
        timeout_ms: u64,
    },
    /// The hub's own message history, `GET /api/v1/things/{id}/messages`.
    #[serde(rename_all = "camelCase")]
    History {
        /// Delete messages older than this many seconds (default 7 days).
        #[serde(default = "default_age", alias = "max_age_s")]
        max_age_s: u64,
        /// Keep at most this many messages per thing (default: no count limit).
        #[serde(default, alias = "max_per_thing")]
        max_per_thing: Option<u64>,
    },
}

/// A route: sources, filters, a sink, and its outbox's bounds (S-14.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// 1 to 64 characters of `[A-Za-z0-9_-]`.
    pub id: String,
    /// At least one source.
    pub sources: Vec<Source>,
    /// An MQTT topic filter the message's topic must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// An S-9.4 query (`SELECT * FROM things WHERE ...`) the message's thing must match now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Where messages go.
    pub sink: Sink,
    /// Most messages waiting in the outbox, 1 to 10,000,000 (default 100,000).
    #[serde(default = "default_outbox", alias = "outbox_max")]
    pub outbox_max: u64,
    /// What a full outbox does (default `drop-oldest`).
    #[serde(default, alias = "when_full")]
    pub when_full: FullPolicy,
    /// Failed deliveries of a batch before its messages become dead letters, 1 to 1,000
    /// (default 10).
    #[serde(default = "default_attempts", alias = "max_attempts")]
    pub max_attempts: u32,
    /// Most messages per delivery, 1 to 1,000 (default 100).
    #[serde(default = "default_batch", alias = "batch_max")]
    pub batch_max: u32,
    /// Milliseconds a partial batch waits for more, 0 to 60,000 (default 100).
    #[serde(default = "default_delay", alias = "batch_delay_ms")]
    pub batch_delay_ms: u64,
    /// First pause after a failed delivery, in ms, 10 to 60,000 (default 200); doubled per
    /// failure up to `retryMaxMs`, with full jitter.
    #[serde(default = "default_retry_initial", alias = "retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest pause between attempts, in ms, up to 3,600,000 (default 30,000).
    #[serde(default = "default_retry_max", alias = "retry_max_ms")]
    pub retry_max_ms: u64,
    /// Most dead letters kept, 1 to 10,000,000 (default 100,000): the oldest beyond are
    /// deleted, counted (D-88).
    #[serde(default = "default_dead_max", alias = "dead_letters_max")]
    pub dead_letters_max: u64,
    /// Dead letters older than this many seconds are deleted, counted, 1 to 31,536,000
    /// (default 604,800, a week; D-88).
    #[serde(default = "default_dead_age", alias = "dead_letter_max_age_s")]
    pub dead_letter_max_age_s: u64,
    /// Start paused (fill the outbox, deliver nothing).
    #[serde(default)]
    pub paused: bool,
}

fn default_timeout() -> u64 {
    5_000
}
fn default_file_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_keep() -> u32 {
    5
}
fn default_age() -> u64 {
    7 * 24 * 3600
}
fn default_outbox() -> u64 {
    100_000
}
fn default_attempts() -> u32 {
    10
}
fn default_batch() -> u32 {
    100
}
fn default_delay() -> u64 {
    100
}
fn default_retry_initial() -> u64 {
    200
}
fn default_retry_max() -> u64 {
    30_000
}
fn default_dead_max() -> u64 {
    100_000
}
fn default_dead_age() -> u64 {
    7 * 24 * 3600
}

/// Why a route definition is refused (REST 400, a start-up error for the config file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The id is empty, too long or has other characters than `[A-Za-z0-9_-]`.
    #[error("route id must be 1 to 64 characters of [A-Za-z0-9_-]")]
    BadId,
    /// No source.
    #[error("a route needs at least one source")]
    NoSource,
    /// The topic filter is not a valid MQTT filter.
    #[error("topic is not a valid MQTT topic filter")]
    BadTopic,
    /// The query does not parse (S-9.4).
    #[error("query: {0}")]
    BadQuery(String),
    /// A number is out of its range.
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
    /// The webhook URL is not http(s).
    #[error("webhook url must be an http:// or https:// URL")]
    BadUrl,
    /// A custom header's name or value is not allowed.
    #[error("header {0:?} is not a valid, settable HTTP header")]
    BadHeader(String),
    /// The file path is empty.
    #[error("file path is empty")]
    BadPath,
    /// The bridge's broker URL is not mqtt(s), or its TLS files are incomplete.
    #[error("mqtt sink: {0}")]
    BadBroker(&'static str),
}

fn range<T: PartialOrd>(v: T, lo: T, hi: T, name: &'static str) -> Result<(), SpecError> {
    if v < lo || v > hi {
        return Err(SpecError::OutOfRange(name));
    }
    Ok(())
}

/// Headers the hub sets itself.
const OWN_HEADERS: [&str; 4] = [
    "content-type",
    "content-length",
    "host",
    "x-iothub-signature",
];

impl RouteSpec {
    /// Checks every field; returns the parsed query, if any (the route's thing filter).
    pub fn validate(&self) -> Result<Option<ThingQuery>, SpecError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(SpecError::BadId);
        }
        if self.sources.is_empty() {
            return Err(SpecError::NoSource);
        }
        if let Some(topic) = &self.topic
            && !is_valid_filter(topic)
        {
            return Err(SpecError::BadTopic);
        }
        let query = self
            .query
            .as_deref()
            .map(ThingQuery::parse)
            .transpose()
            .map_err(|e| SpecError::BadQuery(e.to_string()))?;
        range(self.outbox_max, 1, MAX_OUTBOX, "outboxMax")?;
        range(self.max_attempts, 1, 1000, "maxAttempts")?;
        range(self.batch_max, 1, 1000, "batchMax")?;
        range(self.batch_delay_ms, 0, 60_000, "batchDelayMs")?;
        range(self.dead_letters_max, 1, MAX_OUTBOX, "deadLettersMax")?;
        range(
            self.dead_letter_max_age_s,
            1,
            365 * 24 * 3600,
            "deadLetterMaxAgeS",
        )?;
        range(self.retry_initial_ms, 10, 60_000, "retryInitialMs")?;
        range(
            self.retry_max_ms,
            self.retry_initial_ms,
            3_600_000,
            "retryMaxMs",
        )?;
        match &self.sink {
            Sink::Webhook {
                url,
                headers,
                timeout_ms,
                ..
            } => {
                let parsed = reqwest::Url::parse(url).map_err(|_| SpecError::BadUrl)?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(SpecError::BadUrl);
                }
                range(*timeout_ms, 100, 60_000, "timeoutMs")?;
                if headers.len() > MAX_HEADERS {
                    return Err(SpecError::OutOfRange("headers"));
                }
                for (name, value) in headers {
                    let settable = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .is_ok_and(|n| !OWN_HEADERS.contains(&n.as_str()))
                        && reqwest::header::HeaderValue::from_str(value).is_ok();
                    if !settable {
                        return Err(SpecError::BadHeader(name.clone()));
                    }
                }
            }
            Sink::File {
                path,
                max_bytes,
                keep,
            } => {
                if path.trim().is_empty() {
                    return Err(SpecError::BadPath);
                }
                range(*max_bytes, 1024, u64::MAX, "maxBytes")?;
                range(*keep, 1, 100, "keep")?;
            }
            Sink::Stdout {} => {}
            Sink::Mqtt {
                url,
                topic_prefix,
                cert_file,
                key_file,
                timeout_ms,
                ..
            } => {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|_| SpecError::BadBroker("url must be mqtt://host or mqtts://host"))?;
                if !matches!(parsed.scheme(), "mqtt" | "mqtts") || parsed.host().is_none() {
                    return Err(SpecError::BadBroker(
                        "url must be mqtt://host or mqtts://host",
                    ));
                }
                if topic_prefix.contains(['+', '#', '\0']) {
                    return Err(SpecError::BadBroker("topicPrefix must not hold wildcards"));
                }
                if cert_file.is_some() != key_file.is_some() {
                    return Err(SpecError::BadBroker("certFile and keyFile go together"));
                }
                range(*timeout_ms, 100, 60_000, "timeoutMs")?;
            }
            Sink::History {
                max_age_s,
                max_per_thing,
            } => {
                range(*max_age_s, 1, 100 * 365 * 24 * 3600, "maxAgeS")?;
                if let Some(n) = max_per_thing {
                    range(*n, 1, u64::MAX, "maxPerThing")?;
                }
            }
        }
        Ok(query)
    }

    /// The sink's secret (a webhook's key, a bridge's password), if any.
    fn secret_mut(&mut self) -> Option<&mut String> {
        match &mut self.sink {
            Sink::Webhook { secret, .. } => secret.as_mut(),
            Sink::Mqtt { password, .. } => password.as_mut(),
            _ => None,
        }
    }

    /// The spec as the API shows it: the webhook secret or bridge password replaced by `****`.
    pub fn redacted(&self) -> RouteSpec {
        let mut spec = self.clone();
        if let Some(secret) = spec.secret_mut() {
            *secret = REDACTED.to_owned();
        }
        spec
    }

    /// Keeps `previous`'s secret when this spec's secret is the redacted placeholder (an update
    /// that sent back what a GET showed) and the sink is of the same type.
    pub fn keep_secret_of(&mut self, previous: &RouteSpec) {
        let same_type =
            std::mem::discriminant(&self.sink) == std::mem::discriminant(&previous.sink);
        let old = previous.clone().secret_mut().cloned();
        if let Some(new) = self.secret_mut()
            && new == REDACTED
            && same_type
            && let Some(old) = old
        {
            *new = old;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn webhook(json: &str) -> Result<RouteSpec, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_validation() {
        let spec = webhook(
            r#"{"id":"r1","sources":["telemetry","shadow"],"sink":{"type":"webhook","url":"http://127.0.0.1:9/x","secret":"k"}}"#,
        )
        .unwrap();
        assert_eq!(spec.outbox_max, 100_000);
        assert_eq!(spec.when_full, FullPolicy::DropOldest);
        assert!(spec.validate().unwrap().is_none());
        assert_eq!(
            serde_json::to_value(spec.redacted()).unwrap()["sink"]["secret"],
            "****"
        );
        let mut bad = spec.clone();
        bad.id = "a b".into();
        assert_eq!(bad.validate(), Err(SpecError::BadId));
        let mut bad = spec.clone();
        bad.topic = Some("a/#/b".into());
        assert_eq!(bad.validate(), Err(SpecError::BadTopic));
        let mut bad = spec.clone();
        bad.query = Some("DELETE FROM things".into());
        assert!(matches!(bad.validate(), Err(SpecError::BadQuery(_))));
        let mut bad = spec.clone();
        bad.sink = Sink::Webhook {
            url: "ftp://x".into(),
            secret: None,
            headers: BTreeMap::new(),
            timeout_ms: 1000,
        };
        assert_eq!(bad.validate(), Err(SpecError::BadUrl));
        let mut bad = spec;
        bad.sink = Sink::Webhook {
            url: "http://x".into(),
            secret: None,
            headers: [("X-Iothub-Signature".to_owned(), "v".to_owned())].into(),
            timeout_ms: 1000,
        };
        assert!(matches!(bad.validate(), Err(SpecError::BadHeader(_))));
        assert!(webhook(r#"{"id":"r","sources":["nope"],"sink":{"type":"stdout"}}"#).is_err());
        assert!(webhook(r#"{"id":"r","sources":[],"sink":{"type":"stdout"},"x":1}"#).is_err());
    }

    #[test]
    fn toml_tables_take_snake_case_keys() {
        let text = r#"
            id = "hist"
            sources = ["telemetry"]
            outbox_max = 10
            when_full = "refuse"
            [sink]
            type = "history"
            max_age_s = 60
        "#;
        let spec: RouteSpec = toml::from_str(text).unwrap();
        assert_eq!(spec.outbox_max, 10);
        assert_eq!(spec.when_full, FullPolicy::Refuse);
        assert_eq!(
            spec.sink,
            Sink::History {
                max_age_s: 60,
                max_per_thing: None
            }
        );
        spec.validate().unwrap();
    }
}
