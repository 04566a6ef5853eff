//! The Tsung side of `simulator/bench/tsung-compare` spells its topics by hand (Tsung has no
//! spec crate): they must stay the ones the device core uses, as `iothub-spec` builds them, or
//! the comparison would stop measuring the same workload.

use iothub_spec::ids::DEFAULT_SHADOW;
use iothub_spec::topic::{Filter, Topic};

/// The value of every `topic="..."` attribute of the `<mqtt type="KIND" ...>` elements.
fn topics(xml: &str, kind: &str) -> Vec<String> {
    let open = format!("<mqtt type=\"{kind}\"");
    xml.match_indices(&open)
        .filter_map(|(at, _)| {
            let element = &xml[at..at + xml[at..].find('>')?];
            let start = element.find("topic=\"")? + "topic=\"".len();
            let len = element[start..].find('"')?;
            Some(element[start..start + len].to_owned())
        })
        .collect()
}

#[test]
fn tsung_uses_the_spec_topics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/tsung-plain-mqtt.xml");
    let xml = std::fs::read_to_string(path).expect("the Tsung template is readable");
    let thing = "ts-000042";
    let xml = xml.replace("%%_thing%%", thing);

    // Tsung 1.7.0's SUBSCRIBE is malformed for an MQTT 3.1.1 broker (see the template), so the
    // template makes none today; any it makes must be one of the device core's.
    let core: Vec<String> = Filter::all_for(thing, DEFAULT_SHADOW)
        .iter()
        .map(ToString::to_string)
        .collect();
    for filter in topics(&xml, "subscribe") {
        assert!(
            core.contains(&filter),
            "{filter} is not one of the device core's subscriptions {core:?}"
        );
    }

    let published = topics(&xml, "publish");
    assert_eq!(published.len(), 1, "one publish request in the loop");
    assert_eq!(
        Topic::parse(&published[0]),
        Ok(Topic::Property { thing }),
        "telemetry of the user's thing (S-2: T/messages/property)"
    );
}
