//! `Device::handle_publish` on arbitrary input, on a connected device with requests in flight
//! (so that replies can match): the first byte picks one of the device's own topics (or, when
//! it is 255, the topic is taken from the input too), the rest is the payload. Whatever the
//! bytes, the device must not panic, and what it queues must drain.
#![no_main]

use iothub_sdk_nostd::spec::topic::Topic;
use iothub_sdk_nostd::{Config, Device, Instant};
use libfuzzer_sys::fuzz_target;

const THING: &str = "t1";
const SHADOWS: [&str; 2] = ["default", "named"];

fn topic(i: u8) -> Topic<'static> {
    let shadow = SHADOWS[usize::from(i) % 2];
    let thing = THING;
    match (i / 2) % 9 {
        0 => Topic::ShadowGetAccepted { thing, shadow },
        1 => Topic::ShadowGetRejected { thing, shadow },
        2 => Topic::ShadowUpdateAccepted { thing, shadow },
        3 => Topic::ShadowUpdateRejected { thing, shadow },
        4 => Topic::ShadowUpdateDelta { thing, shadow },
        5 => Topic::ShadowUpdateDocuments { thing, shadow },
        6 => Topic::MethodRequest { thing, method: "m" },
        7 => Topic::NtpResponse { thing },
        _ => Topic::OtaTask { thing },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut config = Config::new(THING, &SHADOWS);
    config.methods = &["m"];
    let mut tx = [0u8; 4096];
    let mut out = [0u8; 4096];
    let Ok(mut dev) = Device::<2, 10, 8>::new(config, &mut tx) else {
        return;
    };
    let now = Instant::from_millis(1_000);
    dev.handle_connected(now, false);
    let _ = dev.request_ntp(now, 2);
    if let Some(s) = dev.shadow_id("default") {
        let _ = dev.report(now, s, &1u8);
    }
    while let Ok(Some(_)) = dev.poll_transmit(now, &mut out) {}

    let mut topic_buf = [0u8; 300];
    let (topic, payload): (&str, &[u8]) = if selector == 255 {
        let split = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len());
        let (t, p) = rest.split_at(split);
        (core::str::from_utf8(t).unwrap_or(""), p)
    } else {
        let t = topic(selector)
            .write_to(&mut topic_buf)
            .map(|t| &*t)
            .unwrap_or("");
        (t, rest)
    };
    let _ = dev.handle_publish(now, topic, payload);
    let later = now.add_millis(60_000);
    dev.handle_timeout(later);
    while let Ok(Some(_)) = dev.poll_transmit(later, &mut out) {}
    while dev.poll_event().is_some() {}
});
