//! `shim-std`: a thermostat-like device on `iothub-sdk` (tokio + rumqttc), the device under
//! test of `iothub-conformance device --exec shim-std`.
//!
//! It reads the suite's environment (`IOTHUB_MQTT_ADDR`, `IOTHUB_THING_ID`,
//! `IOTHUB_THING_SECRET`; `IOTHUB_SHIM_MQTT=5` for MQTT 5), keeps its state (setpoint, mode,
//! firmware) in sync with the `default` shadow, answers the `reboot` method, syncs its clock
//! over NTP, sends telemetry, and "installs" OTA tasks with progress reports. With the
//! test-only `IOTHUB_SHIM_BREAK` it talks through the break proxy (see the crate's `shim`
//! module). It runs until killed.

use std::time::Duration;

use anyhow::Context as _;
use iothub_conformance::shim::{Env, METHOD, OTA_STEP_MS, OTA_STEPS, Thermostat};
use iothub_sdk::{MethodError, StreamExt as _, Thing, ThingOptions};
use serde_json::json;
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    iothub_conformance::shim::answer_help(
        "Usage: shim-std\n\nshim-std: a thermostat-like device on iothub-sdk (tokio + rumqttc), the device under test of\n`iothub-conformance device --exec shim-std`. Runs until killed or until its stdin closes.",
    );
    let env = Env::from_env()?;
    iothub_conformance::shim::exit_on_stdin_eof();
    let addr = env.connect_addr().await?;
    let mut options = ThingOptions::with_addr(&env.thing, &env.secret, &addr)?;
    if env.mqtt5 {
        options = options.mqtt5();
    }
    // Handlers go on the options: in place before the first call can arrive.
    let options = options.on_method(METHOD, |req| async move {
        let delay = req.data.get("delay").and_then(|d| d.as_u64()).unwrap_or(0);
        if delay > 60 {
            return Err(MethodError::bad_input("delay must be at most 60 s"));
        }
        Ok(json!({ "rebootingIn": delay }))
    })?;
    let thing = Thing::connect(options).await.context("connecting")?;
    eprintln!("shim-std: connected as {}", thing.thing_id());

    // The clock sync runs beside the application, as on a real device.
    let ntp = thing.ntp();
    tokio::spawn(async move {
        match ntp.measure().await {
            Ok(c) => eprintln!("shim-std: clock offset {} ms", c.offset_ms),
            Err(e) => eprintln!("shim-std: NTP failed: {e}"),
        }
    });

    let shadow = thing.shadow(iothub_sdk::spec::ids::DEFAULT_SHADOW);
    let mut state = loop {
        match shadow.synced_state(Thermostat::default()).await {
            Ok(s) => break s,
            Err(e) => {
                eprintln!("shim-std: first report failed ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };

    // OTA tasks are "installed" in their own task; the installed version comes back here.
    let (installed_tx, mut installed) = mpsc::channel::<String>(4);
    let mut tasks = thing.ota().tasks();
    let mut telemetry = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            changed = state.next() => match changed {
                Some(Ok(_)) => eprintln!("shim-std: applied setpoint {}", state.get().setpoint),
                Some(Err(e)) => eprintln!("shim-std: could not apply a delta: {e}"),
                None => break,
            },
            Some(task) = tasks.next() => {
                let tx = installed_tx.clone();
                tokio::spawn(async move {
                    for p in OTA_STEPS {
                        if let Err(e) = task.progress(p).await {
                            eprintln!("shim-std: OTA progress not sent: {e}");
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(OTA_STEP_MS)).await;
                    }
                    match task.done().await {
                        Ok(()) => {
                            let _ = tx.send(task.version.clone()).await;
                        }
                        Err(e) => eprintln!("shim-std: OTA result not sent: {e}"),
                    }
                });
            }
            Some(version) = installed.recv() => {
                if let Err(e) = state.modify_and_report(|s| s.firmware = version).await {
                    eprintln!("shim-std: firmware not reported: {e}");
                }
            }
            _ = telemetry.tick() => {
                let t = state.get().setpoint;
                if let Err(e) = thing.send_telemetry(&json!({ "temperature": t })).await {
                    eprintln!("shim-std: telemetry not sent: {e}");
                }
            }
        }
    }
    thing.close().await;
    Ok(())
}
