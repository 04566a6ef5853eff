//! Footprint probe: the device core alone (spec + sans-IO core + JSON scanner + serde-json-core
//! for one application type), every input fed from an opaque buffer (`black_box`), as bytes
//! from the network would be. Its size minus `baseline`'s is "our code" in BENCHMARKS.md.
//!
//! The core's optional parts (direct methods, NTP, OTA) follow this package's features of the
//! same names (all on by default).
//!
//! The panic handler calls `network_input_panicked`, a symbol of its own: if any panicking
//! path were reachable from these inputs, LTO would keep it (`llvm-nm` shows it); when none is,
//! the handler and that symbol are removed.
#![no_std]
#![no_main]
// `tick % N == 0`, not `is_multiple_of`: the probe's loop is part of the measured bytes, and
// `is_multiple_of` (which also handles N = 0) makes it 4 bytes larger.
#![allow(clippy::manual_is_multiple_of)]

use core::hint::black_box;

use cortex_m_rt::entry;
#[cfg(feature = "ota")]
use iothub_sdk_nostd::OtaReport;
use iothub_sdk_nostd::{Config, Device, Event, Instant, QoS};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
struct Desired {
    #[serde(default)]
    setpoint: Option<i32>,
    #[serde(default)]
    on: Option<bool>,
}

#[derive(Serialize)]
struct Reported {
    setpoint: i32,
    on: bool,
}

#[entry]
fn main() -> ! {
    let mut queue = [0u8; 1024];
    let mut out = [0u8; 1024];
    let mut rx = [0u8; 2048];
    let mut config = Config::new("thermostat-1", &["default"]);
    config.methods = &["reboot"];
    config.token_seed = black_box(7);
    let Ok(mut dev) = Device::<1, 4, 8>::new(config, &mut queue) else {
        loop {
            cortex_m::asm::wfi();
        }
    };
    let mut state = Reported {
        setpoint: 20,
        on: false,
    };
    let mut ms: u64 = 0;
    loop {
        ms = ms.wrapping_add(black_box(1));
        let now = Instant::from_millis(ms);
        // The probe's own scheduling on a 32-bit tick: a `u64 %` here would link the 64-bit
        // divider of compiler_builtins (~0.9 KB) into "our code" although no SDK code uses it.
        let tick = black_box(ms as u32);
        if tick % 1000 == 0 {
            dev.handle_connected(now, black_box(false));
        }
        // One "received" message: opaque bytes split at an opaque point.
        let input = black_box(&mut rx);
        let split = black_box(64usize).min(input.len());
        let (topic, payload) = input.split_at(split);
        let topic = core::str::from_utf8(topic).unwrap_or("");
        match dev.handle_publish(now, topic, payload) {
            Ok(Some(Event::Delta(d))) => {
                if let Ok(want) = d.state.parse::<Desired>() {
                    state.setpoint = want.setpoint.unwrap_or(state.setpoint);
                    state.on = want.on.unwrap_or(state.on);
                }
                let _ = dev.report(now, d.shadow, &state);
            }
            Ok(Some(Event::Shadow(s))) => {
                let _ = dev.report(now, s.shadow, &state);
            }
            #[cfg(feature = "methods")]
            Ok(Some(Event::MethodCall(c))) => {
                let _ = dev.respond(now, c.method, c.client_token, 200, None, Some(&state));
            }
            #[cfg(feature = "ota")]
            Ok(Some(Event::OtaTask(_))) => {
                let _ = dev.report_ota(now, OtaReport::Ongoing { progress: 50 });
                let _ = dev.report_ota(now, OtaReport::Done);
            }
            Ok(Some(other)) => {
                black_box(other);
            }
            Ok(None) | Err(_) => {}
        }
        if tick % 3600 == 0 {
            #[cfg(feature = "ntp")]
            let _ = dev.request_ntp(now, 4);
            let _ = dev.publish_telemetry(now, &state, QoS::AtMostOnce);
            if let Some(s) = dev.shadow_id("default") {
                let _ = dev.get_shadow(now, s);
            }
        }
        while let Ok(Some(t)) = dev.poll_transmit(now, &mut out) {
            black_box(t);
        }
        while let Some(e) = dev.poll_event() {
            black_box(e);
        }
        if dev.poll_timeout().is_some_and(|t| t <= now) {
            dev.handle_timeout(now);
        }
        black_box(dev.unix_time_ms(now));
        if tick % 7777 == 0 {
            dev.handle_disconnected(now);
        }
    }
}

#[inline(never)]
#[unsafe(no_mangle)]
fn network_input_panicked() -> ! {
    cortex_m::asm::udf()
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    network_input_panicked()
}
