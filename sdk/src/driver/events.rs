//! The driver's reactions to the device core's events and to the handles' commands.

use iothub_sdk_nostd::spec::code::method_code;
use iothub_sdk_nostd::spec::payload::{ShadowState, field};
use iothub_sdk_nostd::spec::topic::Topic;
use iothub_sdk_nostd::{Event, Instant, OtaReport, QoS, ShadowId};
use serde_json::Value;
use std::time::{Duration, UNIX_EPOCH};

use super::{Command, Driver, OtaUpdate, Pending, core_error, json, object, unescape, unix_ms};
use crate::error::{Error, Result};
use crate::method::MethodRequest;
use crate::ntp::NtpResult;
use crate::ota::OtaTask;
use crate::shadow::{Delta, Document};
use crate::transport::Out;

impl Driver<'_> {
    pub(super) fn on_event(&mut self, ev: Event<'_>, raw: Option<&[u8]>) {
        match ev {
            Event::Delta(d) => self.publish_delta(
                d.shadow,
                Delta {
                    version: d.version,
                    state: object(json(Some(d.state))),
                    resync: false,
                },
            ),
            Event::Shadow(s) => {
                let doc = Document {
                    version: s.version,
                    desired: json(s.desired),
                    reported: json(s.reported),
                    delta: json(s.delta),
                };
                let delta = Delta {
                    version: s.version,
                    state: object(doc.delta.clone()),
                    resync: true,
                };
                self.publish_delta(s.shadow, delta);
                if let Some(req) = s.request
                    && let Some(Pending::Get(reply)) = self.pending.remove(&req.as_u32())
                {
                    let _ = reply.send(Ok(doc));
                }
            }
            Event::MethodCall(c) => {
                let data = json(Some(c.data)).unwrap_or(Value::Null);
                self.dispatch(c.method, c.client_token, data);
            }
            Event::OtaTask(t) => {
                let task = OtaTask {
                    task_id: unescape(t.task_id),
                    task_type: unescape(t.r#type),
                    version: unescape(t.meta.version),
                    md5: t.meta.md5.map(unescape),
                    sha256: t.meta.sha256.map(unescape),
                    content_type: t.meta.content_type.map(unescape),
                    content_length: t.meta.content_length,
                    file_url: unescape(t.file_url),
                    thing: None,
                };
                if let Some(handler) = self.shared.ota_handler.clone() {
                    let mut task = task.clone();
                    task.thing = self.thing();
                    tokio::spawn(handler(task));
                }
                self.senders.ota.send_replace(Some(task));
            }
            Event::Ntp { request, sample } => {
                if let Some(Pending::Ntp(reply)) = self.pending.remove(&request.as_u32()) {
                    let server_ms = sample.unix_time_ms(self.now());
                    let local_ms = unix_ms();
                    let offset_ms = i64::try_from(server_ms).unwrap_or(i64::MAX)
                        - i64::try_from(local_ms).unwrap_or(i64::MAX);
                    let _ = reply.send(Ok(NtpResult {
                        server_time: UNIX_EPOCH + Duration::from_millis(server_ms),
                        offset_ms,
                        round_trip: Duration::from_millis(sample.round_trip_ms),
                    }));
                }
            }
            Event::Accepted {
                request, version, ..
            } => match self.pending.remove(&request.as_u32()) {
                Some(Pending::Update(reply)) => {
                    let _ = reply.send(Ok(version));
                }
                Some(Pending::Get(reply)) => {
                    // A document older than a delta already handed out: still the answer.
                    let _ = reply.send(stale_document(raw, version));
                }
                _ => {}
            },
            Event::Rejected { request, code, .. } => {
                let message = raw
                    .and_then(|r| serde_json::from_slice::<Value>(r).ok())
                    .and_then(|v| v.get(field::MESSAGE)?.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let err = Error::Rejected { code, message };
                match self.pending.remove(&request.as_u32()) {
                    Some(Pending::Get(r)) => drop(r.send(Err(err))),
                    Some(Pending::Update(r)) => drop(r.send(Err(err))),
                    Some(Pending::Ntp(r)) => drop(r.send(Err(err))),
                    None => {}
                }
            }
            Event::TimedOut { request } => {
                let err = || {
                    if self.device.is_connected() {
                        Error::Timeout(self.shared.request_timeout)
                    } else {
                        Error::ConnectionLost
                    }
                };
                match self.pending.remove(&request.as_u32()) {
                    Some(Pending::Get(r)) => drop(r.send(Err(err()))),
                    Some(Pending::Update(r)) => drop(r.send(Err(err()))),
                    Some(Pending::Ntp(r)) => drop(r.send(Err(err()))),
                    None => {}
                }
            }
            Event::SyncLost {
                shadow,
                connections,
            } => {
                tracing::warn!(
                    thing = %self.shared.thing_id,
                    shadow = shadow.index(),
                    attempts = connections,
                    "shadow document out of reach (larger than max_message_bytes?)"
                );
                if let Some(tx) = self.senders.problems.get(shadow.index()) {
                    tx.send_replace(Some(super::SyncProblem::SyncLost {
                        attempts: connections,
                    }));
                }
            }
            Event::SubscribeFailed { subscription } => {
                tracing::warn!(
                    index = subscription.index(),
                    "subscription refused by the hub"
                );
            }
            _ => {}
        }
    }

    /// A handle on the thing for handlers; `None` once every application handle is gone.
    fn thing(&self) -> Option<crate::Thing> {
        Some(crate::Thing {
            cmd: self.weak.upgrade()?,
            shared: self.shared.clone(),
        })
    }

    fn publish_delta(&self, shadow: ShadowId, delta: Delta) {
        if let Some(tx) = self.senders.deltas.get(shadow.index()) {
            tx.send_replace(Some(delta));
        }
    }

    /// Runs the handler of a method call in its own task, or answers 404 / 503 at once.
    fn dispatch(&mut self, method: &str, token: &str, data: Value) {
        let handler = self.shared.handlers.get(method).cloned();
        let Some(handler) = handler else {
            self.respond(
                method,
                token,
                method_code::NOT_FOUND,
                Some("no such method"),
                None,
            );
            return;
        };
        let Ok(permit) = self.methods.clone().try_acquire_owned() else {
            self.respond(method, token, 503, Some("too many calls in progress"), None);
            return;
        };
        let (method, token, weak) = (method.to_owned(), token.to_owned(), self.weak.clone());
        let thing = self.thing();
        tokio::spawn(async move {
            let req = MethodRequest {
                method: method.clone(),
                data,
                thing,
            };
            let outcome = tokio::spawn(handler(req)).await;
            drop(permit);
            let (code, message, data) = match outcome {
                Ok(Ok(v)) => (method_code::OK, None, Some(v)),
                Ok(Err(e)) => (e.code, Some(e.message), e.data),
                Err(_) => (
                    method_code::DEVICE_ERROR,
                    Some("handler failed".to_owned()),
                    None,
                ),
            };
            if let Some(tx) = weak.upgrade() {
                let _ = tx
                    .send(Command::Respond {
                        method,
                        token,
                        code,
                        message,
                        data,
                    })
                    .await;
            }
        });
    }

    fn respond(
        &mut self,
        method: &str,
        token: &str,
        code: u16,
        message: Option<&str>,
        data: Option<&Value>,
    ) {
        let now = self.now();
        if let Err(e) = self.device.respond(now, method, token, code, message, data) {
            tracing::warn!(method, error = %e, "method response not sent");
        }
    }

    fn shadow_id(&self, index: usize) -> Result<ShadowId> {
        self.names
            .get(index)
            .and_then(|n| self.device.shadow_id(n))
            .ok_or_else(|| Error::UnknownShadow(index.to_string()))
    }

    pub(super) fn on_command(&mut self, c: Command) -> bool {
        let now = self.now();
        match c {
            Command::Get { shadow, reply } => {
                match self
                    .shadow_id(shadow)
                    .and_then(|s| self.device.get_shadow(now, s).map_err(core_error))
                {
                    Ok(r) => {
                        self.pending.insert(r.as_u32(), Pending::Get(reply));
                    }
                    Err(e) => drop(reply.send(Err(e))),
                }
            }
            Command::Update {
                shadow,
                desired,
                reported,
                version,
                reply,
            } => {
                let state: ShadowState<Value, Value, ()> = ShadowState {
                    desired,
                    reported,
                    delta: None,
                };
                match self.shadow_id(shadow).and_then(|s| {
                    self.device
                        .update(now, s, &state, version)
                        .map_err(core_error)
                }) {
                    Ok(r) => {
                        self.pending.insert(r.as_u32(), Pending::Update(reply));
                    }
                    Err(e) => drop(reply.send(Err(e))),
                }
            }
            Command::Respond {
                method,
                token,
                code,
                message,
                data,
            } => self.respond(&method, &token, code, message.as_deref(), data.as_ref()),
            Command::Ntp { samples, reply } => match self.device.request_ntp(now, samples) {
                Ok(r) => {
                    self.pending.insert(r.as_u32(), Pending::Ntp(reply));
                }
                Err(e) => drop(reply.send(Err(core_error(e)))),
            },
            Command::Ota {
                task_id,
                update,
                reply,
            } => drop(reply.send(self.report_ota(now, &task_id, update))),
            Command::Telemetry { value, qos, reply } => {
                let r = self.device.publish_telemetry(now, &value, qos);
                drop(reply.send(r.map_err(core_error)));
            }
            Command::User {
                rest,
                payload,
                reply,
            } => drop(reply.send(self.publish_user(&rest, payload))),
            Command::Close { reply } => return self.start_close(Some(reply)),
        }
        true
    }

    fn report_ota(&mut self, now: Instant, task_id: &str, update: OtaUpdate) -> Result<()> {
        if self.device.ota_task_id() != Some(task_id) {
            return Err(Error::OtaTaskGone(task_id.to_owned()));
        }
        let report = match &update {
            OtaUpdate::Progress(p) => OtaReport::Ongoing { progress: *p },
            OtaUpdate::Done => OtaReport::Done,
            OtaUpdate::Failed(code, msg) => OtaReport::Failed {
                code: *code,
                message: Some(msg.as_str()),
            },
            OtaUpdate::Canceled => OtaReport::Canceled,
        };
        self.device.report_ota(now, report).map_err(core_error)?;
        if self.device.ota_task_id().is_none() {
            // Finished: new subscribers of the task stream must not see it again.
            self.senders.ota.send_replace(None);
        }
        Ok(())
    }

    fn publish_user(&mut self, rest: &str, payload: Vec<u8>) -> Result<()> {
        if !self.device.is_connected() {
            return Err(Error::NotConnected);
        }
        let topic = Topic::User {
            thing: &self.shared.thing_id,
            rest,
        };
        topic
            .validate()
            .map_err(|_| Error::InvalidArgument("invalid user topic"))?;
        if self.outbox.is_some() {
            return Err(Error::Core(iothub_sdk_nostd::Error::QueueFull));
        }
        let out = Out::Publish {
            topic: topic.to_string(),
            payload,
            qos: QoS::AtLeastOnce,
        };
        self.client
            .send(out)
            .map_err(|_| Error::Core(iothub_sdk_nostd::Error::QueueFull))
    }
}

fn stale_document(raw: Option<&[u8]>, version: u64) -> Result<Document> {
    let v: Value = serde_json::from_slice(raw.unwrap_or(b"{}"))?;
    let state = v.get(field::STATE);
    let section = |name: &str| state.and_then(|s| s.get(name)).cloned();
    Ok(Document {
        version,
        desired: section(field::DESIRED),
        reported: section(field::REPORTED),
        delta: section(field::DELTA),
    })
}
