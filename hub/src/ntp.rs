//! The NTP responder (S-6.1): echo the device's send time with the hub's receive and send times.

use bytes::Bytes;
use iothub_spec::payload::{NtpRequest, NtpResponse};
use iothub_spec::topic::Topic;

use crate::bus::Bus;
use crate::clock::now_ms;

/// Answers one `T/ntp/req`. Malformed requests are dropped: S-6 defines no error reply.
pub async fn respond(bus: &dyn Bus, thing: &str, payload: &[u8], received_at: u64) {
    let request: NtpRequest = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%thing, error = %e, "malformed NTP request dropped");
            return;
        }
    };
    let reply = response(&request, received_at, now_ms());
    match serde_json::to_vec(&reply) {
        Ok(body) => {
            bus.publish(
                &Topic::NtpResponse { thing }.to_string(),
                Bytes::from(body),
                false,
            )
            .await
        }
        Err(e) => tracing::error!(error = %e, "cannot encode NTP response"),
    }
}

/// The S-6.1 response to `request`, received at `received_at` and sent at `send_time`.
pub fn response(request: &NtpRequest, received_at: u64, send_time: u64) -> NtpResponse {
    NtpResponse {
        client_send_time: request.client_send_time,
        server_recv_time: received_at,
        server_send_time: send_time.max(received_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_client_time_and_orders_server_times() {
        let r = response(
            &NtpRequest {
                client_send_time: 42,
            },
            1_000,
            999,
        );
        assert_eq!(r.client_send_time, 42);
        assert_eq!(r.server_recv_time, 1_000);
        assert!(r.server_send_time >= r.server_recv_time);
    }
}
