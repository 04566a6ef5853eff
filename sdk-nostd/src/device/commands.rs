//! The application's commands: shadow reports, updates and gets, and telemetry, each queued
//! for `poll_transmit`.

use iothub_spec::payload;
use iothub_spec::topic::Topic;
use serde::Serialize;

use super::{Device, Kind, wire};
use crate::json::writer::JsonWriter;
use crate::time::Instant;
use crate::types::*;

impl<'a, const SHADOWS: usize, const IN_FLIGHT: usize, const QUEUE: usize>
    Device<'a, SHADOWS, IN_FLIGHT, QUEUE>
{
    /// Reports `reported` as the shadow's `state.reported` (S-3.3), a partial update merged by the
    /// hub (use [`crate::Patch`] fields to delete keys).
    pub fn report<R: Serialize>(
        &mut self,
        now: Instant,
        shadow: ShadowId,
        reported: &R,
    ) -> Result<RequestId, Error> {
        let state: payload::ShadowState<(), &R, ()> = payload::ShadowState {
            desired: None,
            reported: Some(reported),
            delta: None,
        };
        let _ = now;
        self.update_with(shadow, None, &|w| wire::reported_state(w, &state))
    }

    /// Sends an update request with `state` as its `state` object (for example a
    /// [`iothub_spec::payload::ShadowState`] with desired and/or reported), and `version` for an
    /// optimistic-concurrency check (S-3.4). Answered by [`Event::Accepted`],
    /// [`Event::Rejected`] or [`Event::TimedOut`].
    pub fn update<S: Serialize>(
        &mut self,
        now: Instant,
        shadow: ShadowId,
        state: &S,
        version: Option<u64>,
    ) -> Result<RequestId, Error> {
        let _ = now;
        self.update_with(shadow, version, &|w| w.value(state))
    }

    /// An update request whose `state` member `state` writes (one copy for every state type).
    fn update_with(
        &mut self,
        shadow: ShadowId,
        version: Option<u64>,
        state: &dyn Fn(&mut JsonWriter<'_>),
    ) -> Result<RequestId, Error> {
        let name = self.request_checks(shadow)?;
        let id = self.session.next_id;
        let seed = self.config.token_seed;
        let topic = Topic::ShadowUpdate {
            thing: self.config.thing_id,
            shadow: name,
        };
        self.enqueue(topic, QoS::AtLeastOnce, Some(id), &|w| {
            wire::update_envelope(w, state, seed, id, version)
        })?;
        self.push_request(id, Kind::Update, shadow)
    }

    /// Asks for the shadow's document; answered by [`Event::Shadow`] (or [`Event::Accepted`]
    /// when the document is older than what was applied), [`Event::Rejected`] or
    /// [`Event::TimedOut`].
    pub fn get_shadow(&mut self, now: Instant, shadow: ShadowId) -> Result<RequestId, Error> {
        let _ = now;
        let name = self.request_checks(shadow)?;
        let id = self.session.next_id;
        let seed = self.config.token_seed;
        let topic = Topic::ShadowGet {
            thing: self.config.thing_id,
            shadow: name,
        };
        self.enqueue(topic, QoS::AtLeastOnce, Some(id), &|w| {
            wire::get_request(w, seed, id)
        })?;
        self.push_request(id, Kind::Get { internal: false }, shadow)
    }

    /// Publishes `value` as telemetry on `T/messages/property`.
    pub fn publish_telemetry<T: Serialize>(
        &mut self,
        now: Instant,
        value: &T,
        qos: QoS,
    ) -> Result<(), Error> {
        let _ = now;
        if !self.conn.up {
            return Err(Error::NotConnected);
        }
        let topic = Topic::Property {
            thing: self.config.thing_id,
        };
        self.enqueue(topic, qos, None, &|w| w.value(value))
    }
}
