//! What a connected virtual thing does: the events of its device core (update answers,
//! deltas, method calls, NTP, OTA) and its timers (reports, telemetry, NTP, delayed delta
//! applies and method answers, churn).

use std::time::Duration;

use iothub_sdk_nostd::spec::code::{OtaErrorCode, method_code};
use iothub_sdk_nostd::spec::topic::Topic;
use iothub_sdk_nostd::{Event, OtaReport, QoS, RequestId, ShadowId};
use rand::Rng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use super::{
    Answer, Boot, Core, DesiredKeys, End, InFlight, LoadReport, PendingAnswer, Telemetry, Thing,
    dev_now, next_tick, padding,
};
use crate::fleet::Phase;
use crate::scenario::Profile;

impl Thing {
    pub(super) fn on_event(&mut self, device: &mut Core<'_>, ev: Event<'_>) {
        let now = Instant::now();
        if self.on_boot_answer(device, &ev, now) {
            return;
        }
        match ev {
            Event::Accepted {
                request, version, ..
            } => {
                if let Some(r) = self.take(request) {
                    self.stats().updates_accepted.inc();
                    self.stats().update.record(now - r.sent);
                    if self.last_version.is_some_and(|v| version <= v) {
                        self.stats().out_of_order.inc();
                    }
                    self.last_version = Some(version.max(self.last_version.unwrap_or(0)));
                    self.converged(r.applied);
                }
            }
            Event::Rejected { request, code, .. } if self.take(request).is_some() => {
                self.stats().updates_rejected.add(code.to_string());
            }
            Event::TimedOut { request } => {
                if self.take(request).is_some() {
                    if device.is_connected() {
                        self.stats().updates_timed_out.inc();
                    } else {
                        self.stats().updates_aborted.inc();
                    }
                } else if self.ntp.is_some_and(|(id, _)| id == request) {
                    self.ntp = None;
                    self.stats().ntp_timed_out.inc();
                }
            }
            Event::Delta(d) => {
                self.stats().deltas.inc();
                self.schedule_apply(d.state.parse::<DesiredKeys>().ok());
            }
            Event::Shadow(doc) => {
                if doc.request.is_none()
                    && let Some(at) = self.lost_at.take()
                {
                    self.stats().resync.record(now - at);
                }
                // An apply whose answer was lost with its connection may have been accepted:
                // the document after the reconnect shows it.
                if let Some(reported) = doc.reported.and_then(|r| r.parse::<DesiredKeys>().ok()) {
                    self.converged(reported);
                }
                if let Some(delta) = doc.delta {
                    self.schedule_apply(delta.parse::<DesiredKeys>().ok());
                }
            }
            Event::MethodCall(call) => {
                self.stats().method_calls.inc();
                let p = &self.fleet.scenario.profile;
                let fail = p.method_failure_rate > 0.0 && self.rng.gen_bool(p.method_failure_rate);
                let code = if fail {
                    method_code::DEVICE_ERROR
                } else {
                    method_code::OK
                };
                if p.method_latency_ms == 0 {
                    self.answer(device, call.method, call.client_token, code);
                } else if self.answers.len() < 64 {
                    self.answers.push_back(PendingAnswer {
                        due: now + Duration::from_millis(p.method_latency_ms),
                        method: call.method.to_owned(),
                        token: call.client_token.to_owned(),
                        code,
                    });
                } else {
                    self.stats().protocol_errors.add("method answer queue full");
                }
            }
            Event::Ntp { request, .. } => {
                if let Some((id, sent)) = self.ntp
                    && id == request
                {
                    self.ntp = None;
                    self.stats().ntp_done.inc();
                    self.stats().ntp_rtt.record(now - sent);
                }
            }
            Event::OtaTask(_) => {
                self.stats().ota_tasks.inc();
                let p = &self.fleet.scenario.profile;
                let step = Duration::from_millis(p.ota_step_ms);
                let drop_rate = p.ota_disconnect_rate;
                self.ota = Some((now + step, 0));
                self.ota_drop = drop_rate > 0.0 && self.rng.gen_bool(drop_rate);
            }
            Event::SubscribeFailed { .. } => {
                self.stats().protocol_errors.add("subscription refused");
            }
            _ => {}
        }
    }

    /// Sends a first-boot thing's first report on its first connection (again on the next one
    /// when a lost connection took its answer).
    pub(super) fn send_boot_report(&mut self, device: &mut Core<'_>) {
        let Some(boot) = self.boot.as_mut() else {
            return;
        };
        if boot.report.is_some() {
            return;
        }
        let body = LoadReport {
            temp: 20,
            seq: 0,
            pad: "",
        };
        match device.report(dev_now(&self.fleet), ShadowId::FIRST, &body) {
            Ok(id) => boot.report = Some(id),
            Err(e) => {
                self.boot = None;
                self.stats().first_report_errors.add(format!("update: {e}"));
            }
        }
    }

    /// The answer to the first report, if `ev` is it: times it from the first claim CONNECT.
    fn on_boot_answer(&mut self, device: &Core<'_>, ev: &Event<'_>, now: Instant) -> bool {
        let Some(boot) = self.boot else {
            return false;
        };
        let Some(id) = boot.report else {
            return false;
        };
        match ev {
            Event::Accepted {
                request, version, ..
            } if *request == id => {
                self.boot = None;
                self.last_version = Some((*version).max(self.last_version.unwrap_or(0)));
                self.stats().first_reports.inc();
                self.stats().first_report.record(now - boot.began);
            }
            Event::Rejected { request, code, .. } if *request == id => {
                self.boot = None;
                self.stats()
                    .first_report_errors
                    .add(format!("rejected {code}"));
            }
            Event::TimedOut { request } if *request == id => {
                if device.is_connected() {
                    self.boot = None;
                    self.stats().first_report_errors.add("unanswered");
                } else {
                    // Lost with its connection: sent again after the reconnect.
                    self.boot = Some(Boot {
                        report: None,
                        ..boot
                    });
                }
            }
            _ => return false,
        }
        true
    }

    /// The next report of the OTA task in progress: `ota_steps` times `ongoing`, then the final
    /// result (`failed` with `ota_failure_code` for `ota_failure_rate` of the tasks, else `done`).
    /// A task picked by `ota_disconnect_rate` drops the connection after its first `ongoing`.
    fn ota_step(&mut self, device: &mut Core<'_>, now: Instant, step: u8, p: &Profile) {
        let t = dev_now(&self.fleet);
        let (report, status) = if step < p.ota_steps {
            let progress =
                u8::try_from(u32::from(step + 1) * 100 / u32::from(p.ota_steps)).unwrap_or(100);
            (OtaReport::Ongoing { progress }, "ongoing")
        } else if p.ota_failure_rate > 0.0 && self.rng.gen_bool(p.ota_failure_rate) {
            (
                OtaReport::Failed {
                    code: OtaErrorCode::from_u16(p.ota_failure_code)
                        .unwrap_or(OtaErrorCode::Unknown),
                    message: Some("simulated failure"),
                },
                "failed",
            )
        } else {
            (OtaReport::Done, "done")
        };
        match device.report_ota(t, report) {
            Ok(()) => {
                self.stats().ota_results.add(status);
                self.ota = (status == "ongoing")
                    .then(|| (now + Duration::from_millis(p.ota_step_ms), step + 1));
                if self.ota_drop && status == "ongoing" {
                    // The core keeps the task; the next session reports the rest.
                    self.ota_drop = false;
                    self.stats().ota_results.add("connection dropped mid-task");
                    self.next_churn = Some(now);
                }
            }
            // Retried once connected again; the core keeps the task across reconnects.
            Err(iothub_sdk_nostd::Error::NotConnected) => {}
            Err(e) => {
                self.stats().protocol_errors.add(format!("ota report: {e}"));
                self.ota = None;
            }
        }
    }

    /// Starts timing a PUBLISH about to be encoded with `pkid` when it is QoS 1 telemetry
    /// (the topic is parsed only in runs that publish telemetry at QoS 1).
    pub(super) fn track_telemetry(&mut self, topic: &str, qos: QoS, pkid: u16) {
        if qos == QoS::AtLeastOnce
            && self.fleet.scenario.profile.telemetry_qos == 1
            && matches!(Topic::parse(topic), Ok(Topic::Property { .. }))
            && self
                .telemetry_in_flight
                .push((pkid, Instant::now()))
                .is_err()
        {
            // Unreachable while ticks keep at most `max_in_flight` (<= 10) open. Its PUBACK
            // could not be matched: counted as unacknowledged.
            self.stats().telemetry_unacked.inc();
        }
    }

    /// A PUBACK: ends the timing of the telemetry message with `pkid`, if it is one.
    pub(super) fn on_puback(&mut self, pkid: u16, ok: bool) {
        let Some(pos) = self
            .telemetry_in_flight
            .iter()
            .position(|(p, _)| *p == pkid)
        else {
            return;
        };
        let (_, sent) = self.telemetry_in_flight.swap_remove(pos);
        if ok {
            self.stats().telemetry_acked.inc();
            self.stats().telemetry_ack.record(sent.elapsed());
        } else {
            self.stats().telemetry_unacked.inc();
        }
    }

    fn take(&mut self, id: RequestId) -> Option<InFlight> {
        let pos = self.in_flight.iter().position(|r| r.id == id)?;
        Some(self.in_flight.swap_remove(pos))
    }

    /// Schedules the keys of a delta to be reported back after `delta_apply_delay_ms`; keys of
    /// an apply still waiting are kept (and its time, which is earlier).
    fn schedule_apply(&mut self, state: Option<DesiredKeys>) {
        let Some(keys) = state.filter(|k| !k.is_empty()) else {
            return;
        };
        self.apply = Some(match self.apply {
            Some((due, pending)) => (due, pending.overlaid(keys)),
            None => {
                let delay = Duration::from_millis(self.fleet.scenario.profile.delta_apply_delay_ms);
                (Instant::now() + delay, keys)
            }
        });
    }

    /// Counts what reported `keys` (accepted, or seen in the shadow document) converged: the
    /// business side's desired change outstanding, the configuration rollout.
    fn converged(&mut self, keys: DesiredKeys) {
        if let Some(sp) = keys.setpoint
            && let Some(d) = self.fleet.converge(self.index, sp)
        {
            self.stats().converged.inc();
            self.stats().convergence.record(d);
        }
        if let Some(v) = keys.telemetry_interval
            && let Some(d) = self.fleet.rollout_converge(self.index, v)
        {
            self.stats().rollout_converged.inc();
            self.stats().rollout.record(d);
        }
    }

    pub(super) fn answer(&mut self, device: &mut Core<'_>, method: &str, token: &str, code: u16) {
        let now = dev_now(&self.fleet);
        let data = Answer {
            ok: code == method_code::OK,
        };
        match device.respond(now, method, token, code, None, Some(&data)) {
            Ok(()) => self.stats().method_answers.inc(),
            Err(e) => self
                .stats()
                .protocol_errors
                .add(format!("method answer: {e}")),
        }
    }

    /// Sets the behaviour timers for `phase`.
    pub(super) fn arm(&mut self, phase: Phase) {
        let Phase::Measure { start, .. } = phase else {
            return;
        };
        let p = &self.fleet.scenario.profile;
        let jitter = |rng: &mut SmallRng, every: Duration| {
            Duration::from_secs_f64(rng.gen_range(0.0..every.as_secs_f64().max(1e-6)))
        };
        let after = start.max(Instant::now());
        if p.reported_changes_per_s > 0.0 {
            let every = Duration::from_secs_f64(1.0 / p.reported_changes_per_s);
            self.next_report = Some(after + jitter(&mut self.rng, every));
        }
        if p.telemetry_interval_s > 0.0 {
            let every = Duration::from_secs_f64(p.telemetry_interval_s);
            self.next_telemetry = Some(after + jitter(&mut self.rng, every));
        }
        if p.ntp_interval_s > 0.0 {
            let every = Duration::from_secs_f64(p.ntp_interval_s);
            self.next_ntp = Some(after + jitter(&mut self.rng, every));
        }
        if p.churn_per_s > 0.0 {
            let count = self.fleet.scenario.population.count as f64;
            let rate = p.churn_per_s / count;
            let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
            self.next_churn = Some(after + Duration::from_secs_f64(-u.ln() / rate));
        }
    }

    /// Runs every behaviour that is due; `Some` ends the connection.
    pub(super) fn tick(
        &mut self,
        device: &mut Core<'_>,
        now: Instant,
        phase: Phase,
    ) -> Option<End> {
        let t = dev_now(&self.fleet);
        if device.poll_timeout().is_some_and(|at| at <= t) {
            device.handle_timeout(t);
        }
        let measuring_until = match phase {
            Phase::Measure { end, .. } if now < end => Some(end),
            _ => None,
        };
        let fleet = self.fleet.clone();
        let p = &fleet.scenario.profile;
        while let Some(a) = self.answers.front()
            && a.due <= now
        {
            if let Some(a) = self.answers.pop_front() {
                self.answer(device, &a.method, &a.token, a.code);
            }
        }
        if let Some((due, keys)) = self.apply
            && due <= now
            && self.in_flight.len() < p.max_in_flight
        {
            let r = device.report(t, ShadowId::FIRST, &keys);
            let retry = matches!(r, Err(iothub_sdk_nostd::Error::TooManyInFlight));
            self.track(r, now, keys);
            if !retry {
                self.apply = None;
            }
        }
        if measuring_until.is_none() {
            self.next_report = None;
            self.next_telemetry = None;
            self.next_ntp = None;
            self.next_churn = None;
        }
        if let Some(at) = self.next_report
            && at <= now
        {
            self.next_report = Some(next_tick(at, now, 1.0 / p.reported_changes_per_s));
            if self.in_flight.len() >= p.max_in_flight {
                self.stats().throttled.inc();
            } else {
                self.seq += 1;
                let body = LoadReport {
                    temp: 20 + (self.seq % 10) as u32,
                    seq: self.seq,
                    pad: padding(p.reported_bytes.saturating_sub(40)),
                };
                let r = device.report(t, ShadowId::FIRST, &body);
                self.track(r, now, DesiredKeys::default());
            }
        }
        if let Some((at, step)) = self.ota
            && at <= now
        {
            self.ota_step(device, now, step, p);
        }
        if let Some(at) = self.next_telemetry
            && at <= now
        {
            self.next_telemetry = Some(next_tick(at, now, p.telemetry_interval_s));
            let qos = if p.telemetry_qos == 1 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            if qos == QoS::AtLeastOnce && self.telemetry_in_flight.len() >= p.max_in_flight {
                self.stats().throttled.inc();
            } else {
                self.seq += 1;
                let body = Telemetry {
                    seq: self.seq,
                    pad: padding(p.telemetry_bytes.saturating_sub(24)),
                };
                match device.publish_telemetry(t, &body, qos) {
                    Ok(()) => self.stats().telemetry_sent.inc(),
                    Err(e) => self.stats().protocol_errors.add(format!("telemetry: {e}")),
                }
            }
        }
        if let Some(at) = self.next_ntp
            && at <= now
        {
            self.next_ntp = Some(next_tick(at, now, p.ntp_interval_s));
            if self.ntp.is_none() {
                match device.request_ntp(t, 1) {
                    Ok(id) => {
                        self.ntp = Some((id, now));
                        self.stats().ntp_started.inc();
                    }
                    Err(e) => self.stats().protocol_errors.add(format!("ntp: {e}")),
                }
            }
        }
        self.pump(device);
        if self.next_churn.is_some_and(|at| at <= now) {
            self.next_churn = None;
            return Some(End::Churned);
        }
        if let Some(by) = self.stop_by {
            let idle = self.in_flight.is_empty()
                && self.telemetry_in_flight.is_empty()
                && self.ota.is_none()
                && self.answers.is_empty()
                && self.apply.is_none()
                && self.ntp.is_none()
                && self.boot.is_none_or(|b| b.report.is_none());
            if idle || now >= by {
                for _ in 0..self.in_flight.len() {
                    self.fleet.stats.updates_timed_out.inc();
                }
                self.in_flight.clear();
                return Some(End::Stopped);
            }
        }
        None
    }

    /// Records a shadow request the core accepted; false when it refused it.
    fn track(
        &mut self,
        r: Result<RequestId, iothub_sdk_nostd::Error>,
        now: Instant,
        applied: DesiredKeys,
    ) -> bool {
        match r {
            Ok(id) => {
                let _ = self.in_flight.push(InFlight {
                    id,
                    sent: now,
                    applied,
                });
                self.stats().updates_sent.inc();
                true
            }
            Err(iothub_sdk_nostd::Error::TooManyInFlight) => {
                self.stats().throttled.inc();
                false
            }
            Err(e) => {
                self.stats().protocol_errors.add(format!("update: {e}"));
                false
            }
        }
    }

    /// The earliest timer: the core's, the behaviour's, keep-alive.
    pub(super) fn next_wake(&self, device: &Core<'_>, keep_alive: Duration) -> Instant {
        let mut wake = self.last_write + keep_alive / 2;
        wake = wake.min(self.last_read + keep_alive + keep_alive / 2 + Duration::from_millis(1));
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = wake.min(t);
            }
        };
        consider(
            device
                .poll_timeout()
                .map(|t| self.fleet.epoch + Duration::from_millis(t.as_millis())),
        );
        consider(self.next_report);
        consider(self.next_telemetry);
        consider(self.next_ntp);
        consider(self.next_churn);
        consider(self.stop_by);
        if self.in_flight.len() < self.fleet.scenario.profile.max_in_flight {
            consider(self.apply.map(|(at, _)| at));
        }
        consider(self.answers.front().map(|a| a.due));
        consider(self.ota.map(|(at, _)| at));
        wake
    }
}
