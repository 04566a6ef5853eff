//! What the device shims (`shim-std` on `iothub-sdk`, `shim-nostd` on `iothub-sdk-nostd`'s
//! sans-IO core) share: their environment ([`Env`]), the thermostat's state ([`Thermostat`]),
//! and the test-only break proxy ([`proxy`]) that makes a shim misbehave on the wire so the
//! negative checks can prove the device cases fail.
//!
//! Environment:
//!
//! | variable | meaning |
//! | --- | --- |
//! | `IOTHUB_MQTT_ADDR` | the hub's MQTT address, `host:port` |
//! | `IOTHUB_THING_ID` | the thing id (client id and user name) |
//! | `IOTHUB_THING_SECRET` | the thing's secret (password) |
//! | `IOTHUB_SHIM_MQTT` | `5` for MQTT 5 (`shim-std` only; `shim-nostd` always speaks 5), else 3.1.1 |
//! | `IOTHUB_SHIM_BREAK` | test only: `stale-delta`, `no-client-token`, `acl`, `no-404` or `ota-progress` (see [`Break`]) |

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::device::{ENV_ADDR, ENV_SECRET, ENV_THING};

pub mod proxy;

/// Environment variable choosing MQTT 5 for `shim-std`.
pub const ENV_MQTT: &str = "IOTHUB_SHIM_MQTT";
/// Environment variable selecting a deliberate misbehaviour (test only).
pub const ENV_BREAK: &str = "IOTHUB_SHIM_BREAK";

/// A deliberate misbehaviour of a shim, for the negative checks of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Break {
    /// Deltas older than one already delivered are passed on with a fresh version, so the
    /// device applies them (fails `dev_s3_stale_delta_ignored`).
    StaleDelta,
    /// `clientToken` is removed from shadow updates and method responses (fails
    /// `dev_s4_client_tokens`, `dev_s3_delta_applied`, `dev_s5_*`).
    NoClientToken,
    /// After CONNECT a SUBSCRIBE with a wildcard thing id and a PUBLISH on a hub → thing topic
    /// are sent (fails `dev_s2_allow_list`).
    Acl,
    /// Calls of unknown methods are answered 200 instead of 404 (fails
    /// `dev_s5_unknown_method_404`).
    No404,
    /// OTA progress is reported backwards, `100 - p` (fails `dev_s7_ota_progress`).
    OtaProgress,
}

impl Break {
    /// Parses the value of [`ENV_BREAK`].
    pub fn parse(s: &str) -> anyhow::Result<Break> {
        Ok(match s {
            "stale-delta" => Break::StaleDelta,
            "no-client-token" => Break::NoClientToken,
            "acl" => Break::Acl,
            "no-404" => Break::No404,
            "ota-progress" => Break::OtaProgress,
            other => bail!(
                "{ENV_BREAK}={other:?}: want stale-delta, no-client-token, acl, no-404 or ota-progress"
            ),
        })
    }
}

/// A shim's settings, from the environment the suite gives it.
#[derive(Debug, Clone)]
pub struct Env {
    /// The hub's MQTT address, `host:port`.
    pub addr: String,
    /// The thing id.
    pub thing: String,
    /// The thing's secret.
    pub secret: String,
    /// MQTT 5 asked for.
    pub mqtt5: bool,
    /// A deliberate misbehaviour.
    pub brk: Option<Break>,
}

/// Answers `--help` (or `-h`) with `usage` and exits 0, before the shim reads its environment:
/// a shim run by hand learns what it needs instead of failing on a missing variable.
pub fn answer_help(usage: &str) {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{usage}");
        println!();
        println!("Environment (set by `iothub-conformance device --exec`):");
        println!("  {ENV_ADDR:<22} the (scripted) hub's MQTT address, HOST:PORT");
        println!("  {ENV_THING:<22} the thing id: MQTT client id and user name");
        println!("  {ENV_SECRET:<22} the thing's secret: the MQTT password");
        println!("  {ENV_MQTT:<22} 5 for MQTT 5 (default 3.1.1)");
        std::process::exit(0);
    }
}

impl Env {
    /// Reads the environment.
    pub fn from_env() -> anyhow::Result<Env> {
        let var = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
        Ok(Env {
            addr: var(ENV_ADDR)?,
            thing: var(ENV_THING)?,
            secret: var(ENV_SECRET)?,
            mqtt5: std::env::var(ENV_MQTT).is_ok_and(|v| v == "5"),
            brk: match std::env::var(ENV_BREAK) {
                Ok(v) if !v.is_empty() => Some(Break::parse(&v)?),
                _ => None,
            },
        })
    }

    /// The address the device connects to: the hub's, or a break proxy in front of it.
    pub async fn connect_addr(&self) -> anyhow::Result<String> {
        match self.brk {
            None => Ok(self.addr.clone()),
            Some(b) => {
                let a: SocketAddr = proxy::start(&self.addr, &self.thing, b).await?;
                Ok(a.to_string())
            }
        }
    }

    /// `(host, port)` of a `host:port` address.
    pub fn split_addr(addr: &str) -> anyhow::Result<(String, u16)> {
        let (h, p) = addr
            .rsplit_once(':')
            .with_context(|| format!("address {addr:?} is not host:port"))?;
        Ok((h.to_owned(), p.parse().context("port")?))
    }
}

/// Ends the process when stdin reaches EOF: the suite keeps the device's stdin open while a
/// case runs, so a shim never outlives a suite that was killed. Call once at start-up.
pub fn exit_on_stdin_eof() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        loop {
            match std::io::Read::read(&mut std::io::stdin(), &mut sink) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
}

/// The shims' application state: a thermostat, reported whole in the `default` shadow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thermostat {
    /// Target temperature, applied from desired.
    pub setpoint: f64,
    /// `heat`, `cool` or `off`, applied from desired.
    pub mode: String,
    /// Installed firmware, changed by OTA.
    pub firmware: String,
}

impl Default for Thermostat {
    fn default() -> Self {
        Thermostat {
            setpoint: 20.0,
            mode: "heat".into(),
            firmware: "1.0.0".into(),
        }
    }
}

/// The direct method the shims implement (answered 200).
pub const METHOD: &str = "reboot";
/// The progress steps the shims report while "installing" an OTA task.
pub const OTA_STEPS: [u8; 5] = [0, 25, 50, 75, 100];
/// Pause between two OTA progress reports, ms.
pub const OTA_STEP_MS: u64 = 100;
