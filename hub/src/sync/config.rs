//! The `[registry_sync]` section of the hub's config file (S-13.2): the external registry's URL
//! and headers, and which modes run with which timings.
//!
//! It is a TOML section, not flags: it is a structure (headers per operation, a template with
//! tags and a desired state) that flags would flatten badly. Unknown keys are refused by name,
//! as in the rest of the file, and every value is checked when the file is read.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

/// The whole section.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Base URL of the external registry's HTTP contract (S-13.3), `http://host:port/path`.
    pub url: String,
    /// Deadline of each HTTP call to the external registry, connection included.
    #[serde(default = "defaults::timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Devices asked for per page of the list (1 to 1000).
    #[serde(default = "defaults::page_size")]
    pub page_size: u32,
    /// Most devices the hub reads from the external registry in one round; more ends the round
    /// with an error (a bound on memory, and on a runaway registry).
    #[serde(default = "defaults::max_devices")]
    pub max_devices: usize,
    /// The header sent with each operation (e.g. `Authorization`), each its own.
    #[serde(default)]
    pub auth: Auth,
    /// Mode (a): the external registry is master, on a schedule (S-13.3).
    pub schedule: Option<ScheduleConfig>,
    /// Mode (b): the hub is master, in real time, through durable tasks (S-13.4).
    pub push: Option<PushConfig>,
    /// How many sync events are kept, and for how long (S-13.5).
    #[serde(default)]
    pub events: EventsConfig,
}

/// One header per operation of the contract; an absent one sends no header.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Sent with `GET /devices`.
    pub list: Option<Header>,
    /// Sent with `POST /devices`.
    pub create: Option<Header>,
    /// Sent with `DELETE /devices/{id}`.
    pub delete: Option<Header>,
}

/// A header name and value (a credential: never printed).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The header's name, e.g. `Authorization` or `X-Api-Key`.
    pub name: String,
    /// Its value, e.g. `Bearer 9f2c…`.
    pub value: String,
}

/// Mode (a).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Time between two rounds (the first runs at start-up).
    #[serde(default = "defaults::schedule_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// Disable the things the external registry no longer has instead of deleting them.
    #[serde(default)]
    pub soft_delete: bool,
    /// More things to create (or to remove) than this in one round go through the batch path:
    /// one transaction per [`crate::things::MAX_BATCH`] things.
    #[serde(default = "defaults::batch_threshold")]
    pub batch_threshold: usize,
    /// A round that would remove more than this percentage of the hub's things removes none
    /// (and says so in its report and the log): an adapter answering an empty or truncated
    /// list must not wipe the registry. 100 turns the guard off.
    #[serde(default = "defaults::max_removal_percent")]
    pub max_removal_percent: u8,
    /// What a thing created from an external device starts with.
    #[serde(default)]
    pub template: Template,
}

/// The template of things created by the scheduled sync.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Tags; the device's own tags (from the list) are merged over them.
    #[serde(default)]
    pub tags: Map<String, Value>,
    /// The initial desired state of the default shadow, if any.
    pub desired: Option<Map<String, Value>>,
    /// Whether the thing may connect.
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
}

impl Default for Template {
    fn default() -> Template {
        Template {
            tags: Map::new(),
            desired: None,
            enabled: true,
        }
    }
}

/// Mode (b): the retry of a task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// Delay before the second attempt; doubled for each later one.
    #[serde(default = "defaults::retry_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// Largest delay between two attempts.
    #[serde(default = "defaults::max_interval", deserialize_with = "duration")]
    pub max_interval: Duration,
    /// Attempts before the task is given up.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Time from the change to giving up, whatever the attempts.
    #[serde(default = "defaults::deadline", deserialize_with = "duration")]
    pub deadline: Duration,
    /// How often the queue is looked at for due tasks.
    #[serde(default = "defaults::poll", deserialize_with = "duration")]
    pub poll: Duration,
}

/// Retention of the sync events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Most events kept (the oldest go first).
    #[serde(default = "defaults::keep")]
    pub keep: u64,
    /// Events older than this are deleted.
    #[serde(default = "defaults::max_age", deserialize_with = "duration")]
    pub max_age: Duration,
}

impl Default for EventsConfig {
    fn default() -> EventsConfig {
        EventsConfig {
            keep: defaults::keep(),
            max_age: defaults::max_age(),
        }
    }
}

/// Why the section was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not a valid section.
    #[error("registry_sync: {0}")]
    Invalid(String),
}

mod defaults {
    use std::time::Duration;

    pub fn timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn page_size() -> u32 {
        500
    }
    pub fn max_devices() -> usize {
        1_000_000
    }
    pub fn schedule_interval() -> Duration {
        Duration::from_secs(300)
    }
    pub fn batch_threshold() -> usize {
        100
    }
    pub fn max_removal_percent() -> u8 {
        50
    }
    pub fn yes() -> bool {
        true
    }
    pub fn retry_interval() -> Duration {
        Duration::from_secs(300)
    }
    pub fn max_interval() -> Duration {
        Duration::from_secs(1800)
    }
    pub fn max_attempts() -> u32 {
        100
    }
    pub fn deadline() -> Duration {
        Duration::from_secs(86_400)
    }
    pub fn poll() -> Duration {
        Duration::from_secs(1)
    }
    pub fn keep() -> u64 {
        100_000
    }
    pub fn max_age() -> Duration {
        Duration::from_secs(7 * 86_400)
    }
}

/// A duration as humantime writes it: `500ms`, `30s`, `5m`, `1day`.
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration such as 500ms, 30s, 5m or 1day ({e})"
        ))
    })
}

impl SyncConfig {
    /// Reads and checks the section (the `registry_sync` table of the config file).
    pub fn from_toml(table: toml::Table) -> Result<SyncConfig, ConfigError> {
        let config: SyncConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let Some(rest) = self.url.strip_prefix("http://") else {
            return bad(format!(
                "url {:?} must start with http:// (put TLS in front of the hub's side of an \
                 adapter, S-13.3)",
                self.url
            ));
        };
        if rest.is_empty() || reqwest::Url::parse(&self.url).is_err() {
            return bad(format!("url {:?} is not a URL", self.url));
        }
        if self.timeout.is_zero() {
            return bad("timeout must be above 0".into());
        }
        if !(1..=1000).contains(&self.page_size) {
            return bad("page_size must be 1 to 1000".into());
        }
        for (op, h) in [
            ("list", &self.auth.list),
            ("create", &self.auth.create),
            ("delete", &self.auth.delete),
        ] {
            if let Some(h) = h {
                let name = reqwest::header::HeaderName::from_bytes(h.name.as_bytes());
                let value = reqwest::header::HeaderValue::from_str(&h.value);
                if name.is_err() || value.is_err() {
                    return bad(format!("auth.{op} is not a valid header"));
                }
            }
        }
        if self.schedule.is_none() && self.push.is_none() {
            return bad("neither [registry_sync.schedule] nor [registry_sync.push] is set".into());
        }
        if let Some(s) = &self.schedule {
            if s.interval.is_zero() {
                return bad("schedule.interval must be above 0".into());
            }
            if !(1..=100).contains(&s.max_removal_percent) {
                return bad("schedule.max_removal_percent must be 1 to 100".into());
            }
            crate::things::check_tags(&s.template.tags)
                .map_err(|e| ConfigError::Invalid(format!("schedule.template.tags: {e}")))?;
        }
        if let Some(p) = &self.push {
            if p.interval.is_zero() || p.max_interval < p.interval {
                return bad("push.interval must be above 0 and at most push.max_interval".into());
            }
            if p.max_attempts == 0 || p.deadline.is_zero() || p.poll.is_zero() {
                return bad(
                    "push.max_attempts, push.deadline and push.poll must be above 0".into(),
                );
            }
        }
        if self.events.keep == 0 || self.events.max_age.is_zero() {
            return bad("events.keep and events.max_age must be above 0".into());
        }
        Ok(())
    }

    /// The section as TOML with the header values masked, for `iothub config print`.
    pub fn render_masked(&self) -> String {
        let dur = |d: Duration| Value::String(humantime::format_duration(d).to_string());
        let mut root = Map::new();
        root.insert("url".into(), Value::String(self.url.clone()));
        root.insert("timeout".into(), dur(self.timeout));
        root.insert("page_size".into(), self.page_size.into());
        root.insert("max_devices".into(), self.max_devices.into());
        let mut auth = Map::new();
        for (op, h) in [
            ("list", &self.auth.list),
            ("create", &self.auth.create),
            ("delete", &self.auth.delete),
        ] {
            if let Some(h) = h {
                let header = serde_json::json!({"name": h.name, "value": "****"});
                auth.insert(op.into(), header);
            }
        }
        root.insert("auth".into(), Value::Object(auth));
        if let Some(s) = &self.schedule {
            let mut template = Map::new();
            template.insert("enabled".into(), s.template.enabled.into());
            template.insert("tags".into(), Value::Object(s.template.tags.clone()));
            if let Some(d) = &s.template.desired {
                template.insert("desired".into(), Value::Object(d.clone()));
            }
            root.insert(
                "schedule".into(),
                serde_json::json!({
                    "interval": dur(s.interval),
                    "soft_delete": s.soft_delete,
                    "batch_threshold": s.batch_threshold,
                    "max_removal_percent": s.max_removal_percent,
                    "template": template,
                }),
            );
        }
        if let Some(p) = &self.push {
            root.insert(
                "push".into(),
                serde_json::json!({
                    "interval": dur(p.interval),
                    "max_interval": dur(p.max_interval),
                    "max_attempts": p.max_attempts,
                    "deadline": dur(p.deadline),
                    "poll": dur(p.poll),
                }),
            );
        }
        root.insert(
            "events".into(),
            serde_json::json!({"keep": self.events.keep, "max_age": dur(self.events.max_age)}),
        );
        let section = serde_json::json!({ "registry_sync": root });
        match toml::to_string(&section) {
            Ok(text) => format!("\n{text}"),
            Err(e) => format!("\n# [registry_sync] cannot be shown: {e}\n"),
        }
    }
}

impl std::fmt::Debug for SyncConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The headers are credentials: only their names are shown.
        f.debug_struct("SyncConfig")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("schedule", &self.schedule)
            .field("push", &self.push)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SyncConfig, ConfigError> {
        SyncConfig::from_toml(text.parse().expect("toml"))
    }

    #[test]
    fn defaults_follow_s13() {
        let c = parse("url = \"http://lns:8080/v1\"\n[push]\n[schedule]\n").expect("valid");
        let p = c.push.expect("push");
        assert_eq!(p.interval, Duration::from_secs(300));
        assert_eq!(p.max_interval, Duration::from_secs(1800));
        assert_eq!(p.max_attempts, 100);
        assert_eq!(p.deadline, Duration::from_secs(86_400));
        let s = c.schedule.expect("schedule");
        assert!(!s.soft_delete && s.template.enabled);
        assert_eq!(s.max_removal_percent, 50);
        assert_eq!(c.events.keep, 100_000);
    }

    #[test]
    fn bad_sections_are_refused_by_name() {
        for (text, needle) in [
            ("url = \"http://x/\"\n", "neither"),
            ("url = \"https://x/\"\n[push]\n", "http://"),
            ("url = \"http://x/\"\n[push]\ninterval = \"soon\"\n", "soon"),
            ("url = \"http://x/\"\n[push]\nretries = 3\n", "retries"),
            (
                "url = \"http://x/\"\n[schedule]\nmax_removal_percent = 0\n",
                "max_removal_percent",
            ),
            (
                "url = \"http://x/\"\n[push]\ninterval = \"1h\"\nmax_interval = \"1m\"\n",
                "max_interval",
            ),
            (
                "url = \"http://x/\"\n[push]\n[auth.list]\nname = \"bad header\"\nvalue = \"v\"\n",
                "auth.list",
            ),
        ] {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn printing_masks_the_headers() {
        let c = parse(
            "url = \"http://x/\"\n[push]\n[auth.create]\nname = \"X-Key\"\nvalue = \"s3cret\"\n",
        )
        .expect("valid");
        let shown = c.render_masked();
        assert!(!shown.contains("s3cret"), "{shown}");
        let table: toml::Table = shown.parse().expect("the section is TOML");
        let again =
            SyncConfig::from_toml(table["registry_sync"].as_table().expect("section").clone())
                .expect("and reads back");
        assert_eq!(again.push.map(|p| p.max_attempts), Some(100));
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
