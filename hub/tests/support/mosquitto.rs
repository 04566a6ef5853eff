//! A real Mosquitto 2.0 with dynamic security (`iothub_launch::mosquitto`, shared with the
//! conformance suite's run through Mosquitto) and a hub joined to it.

pub use iothub_launch::mosquitto::Mosquitto;

use super::Hub;

/// Starts hubs on a [`Mosquitto`].
pub trait HubOnBroker {
    /// A hub joined to this broker as `$hub`.
    fn hub(&self) -> Hub;

    /// A hub joined to this broker, with `extra` flags (a shared `--database-url` and an
    /// `--instance-id` make it one of several instances, D-73).
    fn hub_with(&self, extra: &[&str]) -> Hub;
}

impl HubOnBroker for Mosquitto {
    fn hub(&self) -> Hub {
        self.hub_with(&[])
    }

    fn hub_with(&self, extra: &[&str]) -> Hub {
        let args = self.hub_args();
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let hub = Hub::start_args(&args);
        assert_eq!(hub.mqtt, self.addr, "devices are sent to the broker");
        hub
    }
}
