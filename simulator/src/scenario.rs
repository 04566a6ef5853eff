//! The declarative scenario of a run (TOML), with the built-in default.
//!
//! Every field has a default, so a file states only what differs. The built-in default (no
//! `--scenario`) is the README's main job: 1,000 things reporting 5,000 shadow updates/s in all
//! for 60 s; `examples/scenarios/default.toml` spells it out. A scenario is seeded: thing ids,
//! secrets, timers, jitter and the business side's choices come from `seed`.

use std::path::Path;

use anyhow::Context;
use iothub_sdk_nostd::spec::code::OtaErrorCode;
use serde::{Deserialize, Serialize};

/// A whole run.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// Seed of every random choice of the run.
    pub seed: u64,
    /// Seconds of measured activity, once every thing has connected.
    pub duration_s: f64,
    /// Pass criteria checked on the report, as with `--threshold` (e.g. `"update.p99<10ms"`,
    /// `"errors==0"`; see [`crate::threshold`]): a failed one makes the exit status non-zero.
    pub thresholds: Vec<String>,
    /// Who connects.
    pub population: Population,
    /// How fast they connect.
    pub ramp: Ramp,
    /// What every thing does.
    pub profile: Profile,
    /// What the business side does through the REST API.
    pub business: Business,
}

/// The fleet.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Population {
    /// Number of virtual things, each with its own MQTT connection.
    pub count: usize,
    /// Thing id pattern: `{i}` is the index, `{i:06}` zero-padded to 6 digits (S-1.1 applies).
    pub id_pattern: String,
    /// Share of things speaking MQTT 5 (the rest speak 3.1.1), 0.0 to 1.0.
    pub mqtt5_share: f64,
    /// Things per loopback source address (127.0.0.x) when the hub is on loopback: one address
    /// has ~28k ephemeral ports, so large fleets spread over several.
    pub things_per_source_address: usize,
    /// Provision on first boot (S-10): instead of creating the things over REST, the run creates
    /// one enrollment and every thing starts with only its claim credential, provisions itself
    /// over MQTT (serial `SN` + its index), then connects as the thing it got.
    pub first_boot: bool,
    /// The id of the run's enrollment (the thing id rule, S-1.1); a shard appends `-{I}`.
    pub enrollment: String,
    /// How long a first-booting thing keeps retrying (429, 503, transport errors, with backoff
    /// and jitter) before it gives up and is counted as failed, seconds from its first claim
    /// CONNECT.
    pub provision_deadline_s: f64,
    /// The value of the `simulator` tag on every thing the run creates over REST (a shard
    /// appends `-{I}`): the fleet's target for a configuration rollout and a method job. A
    /// first-boot run's things carry the enrollment's id there instead.
    pub tag: String,
}

/// The connect ramp.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ramp {
    /// New connections per second.
    pub connects_per_s: f64,
    /// Pause between the last first connect and the measured period, seconds.
    pub settle_s: f64,
    /// Longest wait for the whole fleet to connect before measuring anyway, seconds.
    pub max_wait_s: f64,
}

/// The behaviour of every virtual thing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Profile {
    /// Reported-state updates per second per thing (0 = none).
    pub reported_changes_per_s: f64,
    /// Approximate size of each reported-state update, bytes.
    pub reported_bytes: usize,
    /// Unanswered updates allowed per thing (at most the hub's 10, S-3.9).
    pub max_in_flight: usize,
    /// Seconds between telemetry messages per thing (0 = none).
    pub telemetry_interval_s: f64,
    /// Approximate size of a telemetry message, bytes.
    pub telemetry_bytes: usize,
    /// MQTT QoS of telemetry: 0 (fire and forget) or 1 (each message's PUBACK is awaited and
    /// timed, the report's `telemetry->puback` row; at most `max_in_flight` unacknowledged).
    pub telemetry_qos: u8,
    /// Delay before a received delta is applied and reported back, ms.
    pub delta_apply_delay_ms: u64,
    /// Methods the things answer (calls of others get 404 from the device core).
    pub methods: Vec<String>,
    /// Time a thing takes to answer a method call, ms.
    pub method_latency_ms: u64,
    /// Share of method calls answered with 500 (a device error), 0.0 to 1.0.
    pub method_failure_rate: f64,
    /// Seconds between NTP exchanges per thing (0 = none).
    pub ntp_interval_s: f64,
    /// Connection drops per second over the whole fleet (0 = none); each dropped thing
    /// reconnects after its backoff and resyncs its shadow.
    pub churn_per_s: f64,
    /// First reconnect delay after a lost connection, ms (doubles per failed attempt, jittered).
    pub reconnect_backoff_ms: u64,
    /// Longest reconnect delay, ms.
    pub max_reconnect_backoff_ms: u64,
    /// Progress reports (`ongoing`) an OTA task gets before its final result (0 = result only).
    pub ota_steps: u8,
    /// Time between two OTA reports of a task, ms.
    pub ota_step_ms: u64,
    /// Share of OTA tasks that end `failed`, 0.0 to 1.0.
    pub ota_failure_rate: f64,
    /// The S-7.2 error code of a failed OTA task: 400, 500, 1400 (URL unusable), 1403 (content
    /// wrong) or 1404 (no space).
    pub ota_failure_code: u16,
    /// Share of OTA tasks during which the thing drops its connection once, right after its first
    /// progress report ("disconnect mid-download"), and reconnects to finish the task.
    pub ota_disconnect_rate: f64,
    /// MQTT keep-alive, seconds.
    pub keep_alive_s: u16,
    /// How long a shadow request or NTP exchange waits for its answer, ms.
    pub request_timeout_ms: u64,
}

/// Business-side load through the hub's REST API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Business {
    /// Desired-state changes per second (REST PUT of desired), each measured until the thing's
    /// reported state matches.
    pub desired_per_s: f64,
    /// Method calls per second (REST), each measured until the REST reply.
    pub methods_per_s: f64,
    /// Method the business side calls (must be in `profile.methods` to be answered 200).
    pub method: String,
    /// The `timeout` of each method call, seconds (S-5.3).
    pub method_timeout_s: u32,
    /// REST requests in flight at most; beyond it ticks are skipped and counted.
    pub concurrency: usize,
    /// Seconds between OTA jobs (0 = none); each is measured from its creation until every task
    /// has ended.
    pub ota_job_interval_s: f64,
    /// Things targeted by each OTA job (connected ones, picked at random).
    pub ota_job_things: usize,
    /// The job's `maxPerMinute` (S-9.6).
    pub ota_max_per_minute: u32,
    /// Roll out one configuration (S-11) to the whole fleet when the measured period begins:
    /// desired `{"telemetryInterval": configuration_value}`, targeting the fleet's `simulator`
    /// tag, succeeding on `state.reported.telemetryInterval = configuration_value`. Measured per
    /// thing from the configuration's creation until the thing's report of the value is accepted;
    /// the hub's counts are polled until every thing has succeeded.
    pub configuration_rollout: bool,
    /// The configuration's name (S-11.1; a shard appends `-{I}`).
    pub configuration_name: String,
    /// The `telemetryInterval` the rollout sets (things report it back; their telemetry does
    /// not change).
    pub configuration_value: u64,
    /// Run one method job (S-12) over the whole fleet when the measured period begins: method
    /// `method` with `method_timeout_s`, targeting the fleet's `simulator` tag by query. Measured
    /// from the job's creation until it completed, and per thing from the job's start until the
    /// thing's record ended `succeeded`, from the per-thing records read back over REST.
    pub method_job: bool,
    /// The method job's `maxPerMinute` (S-12.1, 1 to 60,000).
    pub method_job_per_minute: u32,
    /// Longest wait for a configuration rollout to converge, or for a method job to complete
    /// beyond its pacing (things / `method_job_per_minute`), seconds; past it the run counts an
    /// error (and cancels the job).
    pub fleet_timeout_s: f64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            seed: 1,
            duration_s: 60.0,
            thresholds: Vec::new(),
            population: Population::default(),
            ramp: Ramp::default(),
            profile: Profile::default(),
            business: Business::default(),
        }
    }
}

impl Default for Population {
    fn default() -> Self {
        Population {
            count: 1000,
            id_pattern: "sim-{i:06}".to_owned(),
            mqtt5_share: 0.0,
            things_per_source_address: 5000,
            first_boot: false,
            enrollment: "sim-first-boot".to_owned(),
            provision_deadline_s: 60.0,
            tag: "sim".to_owned(),
        }
    }
}

impl Default for Ramp {
    fn default() -> Self {
        Ramp {
            connects_per_s: 2000.0,
            settle_s: 1.0,
            max_wait_s: 120.0,
        }
    }
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            reported_changes_per_s: 5.0,
            reported_bytes: 200,
            max_in_flight: 10,
            telemetry_interval_s: 0.0,
            telemetry_bytes: 100,
            telemetry_qos: 0,
            delta_apply_delay_ms: 0,
            methods: vec!["echo".to_owned()],
            method_latency_ms: 0,
            method_failure_rate: 0.0,
            ntp_interval_s: 0.0,
            churn_per_s: 0.0,
            reconnect_backoff_ms: 500,
            max_reconnect_backoff_ms: 10_000,
            ota_steps: 4,
            ota_step_ms: 100,
            ota_failure_rate: 0.0,
            ota_failure_code: 1403,
            ota_disconnect_rate: 0.0,
            keep_alive_s: 60,
            request_timeout_ms: 10_000,
        }
    }
}

impl Default for Business {
    fn default() -> Self {
        Business {
            desired_per_s: 0.0,
            methods_per_s: 0.0,
            method: "echo".to_owned(),
            method_timeout_s: 10,
            concurrency: 64,
            ota_job_interval_s: 0.0,
            ota_job_things: 100,
            ota_max_per_minute: 60_000,
            configuration_rollout: false,
            configuration_name: "sim-rollout".to_owned(),
            configuration_value: 15,
            method_job: false,
            method_job_per_minute: 6000,
            fleet_timeout_s: 300.0,
        }
    }
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        let s: Scenario =
            toml::from_str(&text).with_context(|| format!("bad scenario {}", path.display()))?;
        Ok(s)
    }

    /// Checks ranges and that the id pattern yields valid thing ids.
    pub fn validate(&self) -> anyhow::Result<()> {
        let p = &self.profile;
        anyhow::ensure!(self.population.count > 0, "population.count must be >= 1");
        anyhow::ensure!(
            self.duration_s.is_finite() && self.duration_s > 0.0,
            "duration_s must be positive"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.population.mqtt5_share),
            "population.mqtt5_share must be 0.0 to 1.0"
        );
        anyhow::ensure!(
            self.population.things_per_source_address > 0,
            "population.things_per_source_address must be >= 1"
        );
        anyhow::ensure!(
            self.ramp.connects_per_s > 0.0,
            "ramp.connects_per_s must be positive"
        );
        anyhow::ensure!(
            (1..=10).contains(&p.max_in_flight),
            "profile.max_in_flight must be 1 to 10 (S-3.9)"
        );
        anyhow::ensure!(p.telemetry_qos <= 1, "profile.telemetry_qos must be 0 or 1");
        anyhow::ensure!(
            (0.0..=1.0).contains(&p.method_failure_rate),
            "profile.method_failure_rate must be 0.0 to 1.0"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&p.ota_failure_rate),
            "profile.ota_failure_rate must be 0.0 to 1.0"
        );
        anyhow::ensure!(
            OtaErrorCode::from_u16(p.ota_failure_code).is_some(),
            "profile.ota_failure_code must be an S-7.2 code (400, 500, 1400, 1403, 1404)"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&p.ota_disconnect_rate),
            "profile.ota_disconnect_rate must be 0.0 to 1.0"
        );
        anyhow::ensure!(
            self.business.ota_job_things > 0 && self.business.ota_max_per_minute > 0,
            "business.ota_job_things and business.ota_max_per_minute must be >= 1"
        );
        let b = &self.business;
        anyhow::ensure!(
            (1..=60_000).contains(&b.method_job_per_minute),
            "business.method_job_per_minute must be 1 to 60000 (S-12.1)"
        );
        anyhow::ensure!(
            b.fleet_timeout_s.is_finite() && b.fleet_timeout_s > 0.0,
            "business.fleet_timeout_s must be positive"
        );
        // Room for a shard's `-{I}` (up to 6 more bytes) in the id rule of S-1.1 (D-47).
        for (what, id) in [
            ("business.configuration_name", &b.configuration_name),
            ("population.tag", &self.population.tag),
        ] {
            let longest = format!("{id}-65535");
            anyhow::ensure!(
                iothub_spec::ids::is_valid_thing_id(id)
                    && iothub_spec::ids::is_valid_thing_id(&longest),
                "{what} must be 1 to 58 characters of [0-9A-Za-z_-]"
            );
        }
        for rate in [
            p.reported_changes_per_s,
            p.telemetry_interval_s,
            p.ntp_interval_s,
            p.churn_per_s,
            self.business.desired_per_s,
            self.business.methods_per_s,
            self.business.ota_job_interval_s,
        ] {
            anyhow::ensure!(
                rate.is_finite() && rate >= 0.0,
                "rates and intervals must be >= 0"
            );
        }
        anyhow::ensure!(p.keep_alive_s >= 5, "profile.keep_alive_s must be >= 5");
        anyhow::ensure!(
            self.business.concurrency > 0,
            "business.concurrency must be >= 1"
        );
        for m in &p.methods {
            anyhow::ensure!(
                iothub_spec::ids::is_valid_method_name(m),
                "invalid method name {m:?} (S-5.1)"
            );
        }
        anyhow::ensure!(
            iothub_spec::ids::is_valid_method_name(&self.business.method),
            "invalid business.method"
        );
        for t in &self.thresholds {
            crate::threshold::Threshold::parse(t)?;
        }
        for i in [0, self.population.count - 1] {
            let id = self.thing_id(i);
            anyhow::ensure!(
                iothub_spec::ids::is_valid_thing_id(&id),
                "id_pattern gives an invalid thing id {id:?} (S-1.1)"
            );
        }
        if self.population.first_boot {
            // A shard's enrollment id carries `-{I}` (up to 5 more bytes).
            let longest = format!("{}-65535", self.population.enrollment);
            anyhow::ensure!(
                iothub_spec::ids::is_valid_thing_id(&self.population.enrollment)
                    && iothub_spec::ids::is_valid_thing_id(&longest),
                "population.enrollment must be a valid id (S-1.1) of at most 58 bytes"
            );
            let d = self.population.provision_deadline_s;
            anyhow::ensure!(
                d.is_finite() && d > 0.0,
                "population.provision_deadline_s must be positive"
            );
        }
        Ok(())
    }

    /// The id of thing `i`.
    pub fn thing_id(&self, i: usize) -> String {
        expand_pattern(&self.population.id_pattern, i)
    }

    /// The serial thing `i` provisions with on first boot (S-10.1): `SN` and its index, unique
    /// in the fleet and a valid serial whatever the id pattern.
    pub fn serial(&self, i: usize) -> String {
        format!("SN{i:08}")
    }

    /// The literal start of the id pattern (before its first `{i`): the enrollment's `prefix`
    /// id rule (D-44), so that the hub accepts exactly the ids the things ask for.
    pub fn id_prefix(&self) -> &str {
        let p = &self.population.id_pattern;
        p.find("{i").map_or(p.as_str(), |at| &p[..at])
    }
}

/// Replaces `{i}` and `{i:0N}` in `pattern` by `i`.
fn expand_pattern(pattern: &str, i: usize) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut rest = pattern;
    while let Some(start) = rest.find("{i") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let Some(end) = after.find('}') else {
            out.push_str(after);
            return out;
        };
        let spec = &after[2..end];
        match spec
            .strip_prefix(":0")
            .and_then(|w| w.parse::<usize>().ok())
        {
            Some(width) => out.push_str(&format!("{i:0width$}")),
            None if spec.is_empty() => out.push_str(&i.to_string()),
            None => out.push_str(&after[..=end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> Scenario {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/scenarios")
            .join(name);
        Scenario::load(&path).expect("example scenario parses")
    }

    #[test]
    fn default_file_is_the_built_in_default() {
        assert_eq!(example("default.toml"), Scenario::default());
    }

    #[test]
    fn every_example_validates() {
        for name in [
            "default.toml",
            "methods.toml",
            "churn.toml",
            "ota-rollout.toml",
            "plain-mqtt.toml",
            "first-boot.toml",
            "fleet-ops.toml",
        ] {
            example(name)
                .validate()
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn patterns_expand() {
        assert_eq!(expand_pattern("sim-{i:06}", 42), "sim-000042");
        assert_eq!(expand_pattern("t{i}", 7), "t7");
        assert_eq!(expand_pattern("a-{i}-{i:03}", 5), "a-5-005");
        assert_eq!(expand_pattern("fixed", 5), "fixed");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Scenario>("[profile]\nreported_change_per_s = 1.0\n").is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        let mut s = Scenario::default();
        s.profile.max_in_flight = 11;
        assert!(s.validate().is_err());
        let mut s = Scenario::default();
        s.population.id_pattern = "bad id {i}".into();
        assert!(s.validate().is_err());
        let mut s = Scenario::default();
        s.profile.telemetry_qos = 2;
        assert!(s.validate().is_err());
        let mut s = Scenario::default();
        s.population.first_boot = true;
        s.population.enrollment = "no spaces".into();
        assert!(s.validate().is_err());
        s.population.enrollment = "e".repeat(60);
        assert!(s.validate().is_err(), "no room for a shard's suffix");
        s.population.enrollment = "boot".into();
        s.population.provision_deadline_s = 0.0;
        assert!(s.validate().is_err());
        let mut s = Scenario::default();
        s.business.method_job_per_minute = 60_001;
        assert!(s.validate().is_err());
        let mut s = Scenario::default();
        s.business.configuration_name = "c".repeat(59);
        assert!(s.validate().is_err(), "no room for a shard's suffix");
        let mut s = Scenario::default();
        s.population.tag = "it's".into();
        assert!(
            s.validate().is_err(),
            "the tag goes into a query between quotes"
        );
        let mut s = Scenario::default();
        s.business.fleet_timeout_s = 0.0;
        assert!(s.validate().is_err());
    }

    #[test]
    fn first_boot_serials_and_id_prefix() {
        let mut s = Scenario::default();
        assert_eq!(s.serial(42), "SN00000042");
        assert_eq!(s.id_prefix(), "sim-");
        s.population.id_pattern = "{i}".into();
        assert_eq!(s.id_prefix(), "");
        s.population.id_pattern = "fixed".into();
        assert_eq!(s.id_prefix(), "fixed");
    }
}
