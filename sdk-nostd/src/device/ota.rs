//! OTA tasks for the device (S-7): the task in progress, its results, the re-sent final result
//! (feature `ota`).

use heapless::String;
use iothub_spec::code::{OtaErrorCode, OtaStatus};
use iothub_spec::ids::MAX_ID_LEN;
use iothub_spec::payload::{self, field};
use iothub_spec::topic::Topic;

use super::{Device, plain_token, queue, wire};
use crate::json::{self, has_backslash};
use crate::time::Instant;
use crate::types::{Error, Event, Ignored, OtaReport, QoS};

/// The OTA task the device is working on (session state, S-7.2).
#[derive(Debug, Clone)]
pub(super) struct OtaState {
    task_id: String<MAX_ID_LEN>,
    token: String<MAX_ID_LEN>,
    /// The last final status reported, re-sent when the hub sends the task again.
    last_final: Option<(OtaStatus, Option<u16>)>,
}

impl<'a, const SHADOWS: usize, const IN_FLIGHT: usize, const QUEUE: usize>
    Device<'a, SHADOWS, IN_FLIGHT, QUEUE>
{
    /// Reports the state of the current OTA task (S-7.2). The timestamp is the NTP-corrected
    /// Unix time when known, else `now`. After `Done`, `Failed` or `Canceled` the task is over and
    /// further reports fail with [`Error::NoOtaTask`]. Feature `ota`.
    pub fn report_ota(&mut self, now: Instant, report: OtaReport<'_>) -> Result<(), Error> {
        if !self.conn.up {
            return Err(Error::NotConnected);
        }
        let ota = self.session.ota.as_ref().ok_or(Error::NoOtaTask)?;
        if ota.last_final.is_some() {
            return Err(Error::NoOtaTask);
        }
        let (status, progress, err_code, err_msg) = match report {
            OtaReport::Ongoing { progress } => (
                OtaStatus::Ongoing,
                Some(progress.min(iothub_spec::limits::OTA_PROGRESS_MAX)),
                None,
                None,
            ),
            OtaReport::Done => (OtaStatus::Done, None, None, None),
            OtaReport::Failed { code, message } => {
                (OtaStatus::Failed, None, Some(code.as_u16()), message)
            }
            OtaReport::Canceled => (OtaStatus::Canceled, None, None, None),
        };
        self.enqueue_ota_result(now, status, progress, err_code, err_msg)?;
        if status.is_final()
            && let Some(ota) = self.session.ota.as_mut()
        {
            ota.last_final = Some((status, err_code));
        }
        Ok(())
    }

    /// Queues a result of the current OTA task (S-7.2), with the task's ids borrowed from the
    /// session (neither cloned nor moved out and back: `OtaState` is 140 bytes).
    fn enqueue_ota_result(
        &mut self,
        now: Instant,
        status: OtaStatus,
        progress: Option<u8>,
        err_code: Option<u16>,
        err_msg: Option<&str>,
    ) -> Result<(), Error> {
        let timestamp = self.ota_timestamp(now);
        let ota = self.session.ota.as_ref().ok_or(Error::NoOtaTask)?;
        let body = payload::OtaResult {
            client_token: &ota.token,
            task_id: &ota.task_id,
            status,
            progress,
            err_code,
            err_msg,
            timestamp,
        };
        let topic = Topic::OtaTaskResult {
            thing: self.config.thing_id,
        };
        queue::enqueue_in(
            self.tx,
            &mut self.conn,
            self.config.limits.max_request_payload,
            topic,
            QoS::AtLeastOnce,
            None,
            &|w| wire::ota_result(w, &body),
        )
    }

    /// An OTA result's timestamp (S-7.2): the NTP-corrected Unix time when known, else `now`.
    // Out of line: one copy for the results and the refusal (BENCHMARKS.md, footprint).
    #[inline(never)]
    fn ota_timestamp(&self, now: Instant) -> u64 {
        self.unix_time_ms(now).unwrap_or(now.as_millis())
    }

    /// The id of the OTA task in progress, if any. Feature `ota`.
    pub fn ota_task_id(&self) -> Option<&str> {
        self.session
            .ota
            .as_ref()
            .filter(|o| o.last_final.is_none())
            .map(|o| o.task_id.as_str())
    }

    // Out of line: measured smaller on thumbv7em at opt-level "z" (BENCHMARKS.md, footprint).
    #[inline(never)]
    pub(super) fn on_ota_task<'p>(
        &mut self,
        now: Instant,
        payload: &'p str,
    ) -> Result<Option<Event<'p>>, Ignored> {
        let max = self.config.limits.max_client_token;
        let task = match wire::ota_task(payload, self.config.max_input_depth) {
            Some(t)
                if t.task_id.len() <= MAX_ID_LEN
                    && !t.task_id.is_empty()
                    && t.client_token.len() <= max.min(MAX_ID_LEN)
                    && !has_backslash(t.task_id)
                    && !has_backslash(t.client_token) =>
            {
                t
            }
            _ => return self.refuse_ota_task(now, payload),
        };
        if let Some(ota) = self.session.ota.as_ref()
            && ota.task_id.as_str() == task.task_id
        {
            if let Some((status, err_code)) = ota.last_final {
                // The hub missed our final result (it re-sends pending tasks on reconnect).
                if self.conn.up {
                    let _ = self.enqueue_ota_result(now, status, None, err_code, None);
                }
            }
            return Err(Ignored::Duplicate);
        }
        // Written in place (no 140-byte `OtaState` built on the stack and moved in). Both ids
        // fit: their lengths were checked against `MAX_ID_LEN` above.
        let ota = self.session.ota.insert(OtaState {
            task_id: String::new(),
            token: String::new(),
            last_final: None,
        });
        if ota.task_id.push_str(task.task_id).is_err()
            || ota.token.push_str(task.client_token).is_err()
        {
            self.session.ota = None;
            return Err(Ignored::BadOtaTask);
        }
        Ok(Some(Event::OtaTask(task)))
    }

    /// Answers a malformed OTA task `failed` 400 when its task id and token are readable.
    fn refuse_ota_task<'p>(
        &mut self,
        now: Instant,
        payload: &'p str,
    ) -> Result<Option<Event<'p>>, Ignored> {
        let max = self.config.limits.max_client_token;
        let Ok([tid, tok]) = json::split_str(
            payload,
            &[field::TASK_ID, field::CLIENT_TOKEN],
            self.config.max_input_depth,
        ) else {
            return Err(Ignored::BadOtaTask);
        };
        if let (Some(task_id), Some(client_token)) =
            (plain_token(tid, MAX_ID_LEN), plain_token(tok, max))
            && self.conn.up
        {
            let body = payload::OtaResult {
                client_token,
                task_id,
                status: OtaStatus::Failed,
                progress: None,
                err_code: Some(OtaErrorCode::BadTask.as_u16()),
                err_msg: Some("bad task"),
                timestamp: self.ota_timestamp(now),
            };
            let topic = Topic::OtaTaskResult {
                thing: self.config.thing_id,
            };
            let _ = self.enqueue(topic, QoS::AtLeastOnce, None, &|w| {
                wire::ota_result(w, &body)
            });
        }
        Err(Ignored::BadOtaTask)
    }
}
