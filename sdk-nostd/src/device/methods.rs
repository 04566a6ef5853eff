//! Direct methods for the device (S-5): calls handed to the application, 404 for unknown
//! methods, responses (feature `methods`).

use iothub_spec::code::method_code;
use iothub_spec::payload::{self, field};
use iothub_spec::topic::Topic;
use serde::Serialize;

use super::{Device, plain_token, raw_json, wire};
use crate::json;
use crate::time::Instant;
use crate::types::{Error, Event, Ignored, MethodCall, QoS, RawJson};

impl<'a, const SHADOWS: usize, const IN_FLIGHT: usize, const QUEUE: usize>
    Device<'a, SHADOWS, IN_FLIGHT, QUEUE>
{
    /// Answers a direct-method call (S-5.2) with `code` (see
    /// [`iothub_spec::code::method_code`]), an optional `message` and optional `data`. Feature
    /// `methods`.
    pub fn respond<D: Serialize>(
        &mut self,
        now: Instant,
        method: &str,
        client_token: &str,
        code: u16,
        message: Option<&str>,
        data: Option<&D>,
    ) -> Result<(), Error> {
        let _ = now;
        if !self.conn.up {
            return Err(Error::NotConnected);
        }
        if client_token.is_empty() || client_token.len() > self.config.limits.max_client_token {
            return Err(Error::InvalidArgument);
        }
        let topic = Topic::MethodResponse {
            thing: self.config.thing_id,
            method,
        };
        let body = payload::MethodResponse {
            client_token,
            code,
            message,
            data,
        };
        self.enqueue(topic, QoS::AtLeastOnce, None, &|w| {
            wire::method_response(w, &body)
        })
    }

    // Out of line: measured smaller on thumbv7em at opt-level "z" (BENCHMARKS.md, footprint).
    #[inline(never)]
    pub(super) fn on_method<'p>(
        &mut self,
        method: &'p str,
        payload: &'p str,
    ) -> Result<Option<Event<'p>>, Ignored> {
        let [tok, data] = json::split_str(
            payload,
            &[field::CLIENT_TOKEN, field::DATA],
            self.config.max_input_depth,
        )
        .map_err(Ignored::Json)?;
        let client_token =
            plain_token(tok, self.config.limits.max_client_token).ok_or(Ignored::Malformed)?;
        if self.config.all_methods || self.config.methods.contains(&method) {
            let data = data.map_or(RawJson("null"), raw_json);
            return Ok(Some(Event::MethodCall(MethodCall {
                method,
                client_token,
                data,
            })));
        }
        if !self.conn.up {
            return Err(Ignored::QueueFull);
        }
        let topic = Topic::MethodResponse {
            thing: self.config.thing_id,
            method,
        };
        self.enqueue(topic, QoS::AtLeastOnce, None, &|w| {
            wire::method_response_without_data(
                w,
                client_token,
                method_code::NOT_FOUND,
                Some("no such method"),
            )
        })
        .map_err(|_| Ignored::QueueFull)?;
        Ok(None)
    }
}
