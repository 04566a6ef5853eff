//! The application on the simulated device: its typed shadow state, the requests it has in
//! flight, and the per-event invariant checks.

use std::collections::{HashMap, HashSet};

use iothub_sdk_nostd::{Device, Event, Instant, OtaReport, RequestId};
use serde::{Deserialize, Serialize};

use crate::hub::Hub;
use crate::{HUB_CLOCK_OFFSET, SHADOWS, TIMEOUT};

/// The application's typed view of a shadow state (serde-json-core, no heap).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Keys {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k0: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k1: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k2: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k3: Option<i64>,
}

impl Keys {
    fn apply(&mut self, d: Keys) {
        self.k0 = d.k0.or(self.k0);
        self.k1 = d.k1.or(self.k1);
        self.k2 = d.k2.or(self.k2);
        self.k3 = d.k3.or(self.k3);
    }
    pub(crate) fn get(&self, k: &str) -> Option<i64> {
        match k {
            "k0" => self.k0,
            "k1" => self.k1,
            "k2" => self.k2,
            "k3" => self.k3,
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Pending {
    Report(usize),
    Get,
    Ntp,
}

/// The application on the device, with the invariant bookkeeping.
#[derive(Default)]
pub(crate) struct App {
    pub(crate) state: [Keys; 2],
    /// Last version applied per shadow (delta or document).
    last_version: [Option<u64>; 2],
    dirty: [bool; 2],
    report_in_flight: [bool; 2],
    pub(crate) pending: HashMap<RequestId, (u64, Pending)>,
    resolved: HashSet<RequestId>,
    pub(crate) ntp_busy: bool,
    pub(crate) ntp_results: u32,
    pub(crate) deltas: u32,
    pub(crate) documents: u32,
    pub(crate) timeouts: u32,
}

pub(crate) type Dev<'a> = Device<'a, 2, 10, 8>;

impl App {
    fn resolve(&mut self, now: u64, id: RequestId, timeout_bound: u64) -> Pending {
        assert!(self.resolved.insert(id), "{id:?} answered twice");
        let (issued, kind) = self
            .pending
            .remove(&id)
            .unwrap_or_else(|| panic!("answer to unknown {id:?}"));
        assert!(
            now - issued <= timeout_bound,
            "{id:?} ({kind:?}) waited {} ms",
            now - issued
        );
        match kind {
            Pending::Report(s) => self.report_in_flight[s] = false,
            Pending::Ntp => self.ntp_busy = false,
            Pending::Get => {}
        }
        kind
    }

    pub(crate) fn on_event(&mut self, dev: &mut Dev<'_>, hub: &mut Hub, now: u64, ev: Event<'_>) {
        match ev {
            Event::Delta(d) => {
                let s = d.shadow.index();
                assert!(
                    self.last_version[s].is_none_or(|v| d.version > v),
                    "delta {} after {:?}",
                    d.version,
                    self.last_version[s]
                );
                self.last_version[s] = Some(d.version);
                let keys: Keys = d.state.parse().expect("typed delta");
                self.state[s].apply(keys);
                self.dirty[s] = true;
                self.deltas += 1;
            }
            Event::Shadow(doc) => {
                let s = doc.shadow.index();
                assert!(
                    self.last_version[s].is_none_or(|v| doc.version >= v),
                    "document {} after {:?}",
                    doc.version,
                    self.last_version[s]
                );
                self.last_version[s] = Some(doc.version);
                let desired: Keys = doc.desired.map(|d| d.parse().unwrap()).unwrap_or_default();
                self.state[s].apply(desired);
                self.dirty[s] = true;
                self.documents += 1;
                if let Some(id) = doc.request {
                    self.resolve(now, id, TIMEOUT);
                }
            }
            Event::Accepted { request, .. } => {
                self.resolve(now, request, TIMEOUT);
            }
            Event::Rejected { request, code, .. } => {
                assert!(matches!(code, 503 | 409), "unexpected rejection {code}");
                if let Pending::Report(s) = self.resolve(now, request, TIMEOUT) {
                    self.dirty[s] = true;
                }
            }
            Event::TimedOut { request } => {
                self.timeouts += 1;
                if let Pending::Report(s) = self.resolve(now, request, 3 * TIMEOUT) {
                    self.dirty[s] = true;
                }
            }
            Event::Ntp { request, sample } => {
                self.resolve(now, request, 3 * TIMEOUT);
                let truth = HUB_CLOCK_OFFSET + now;
                let est = sample.unix_time_ms(Instant::from_millis(now));
                assert!(
                    est.abs_diff(truth) <= sample.round_trip_ms / 2 + 2,
                    "ntp estimate {est} vs {truth}, rtt {}",
                    sample.round_trip_ms
                );
                self.ntp_results += 1;
            }
            Event::MethodCall(call) => {
                let _ = hub;
                let _ = dev.respond::<()>(
                    Instant::from_millis(now),
                    call.method,
                    call.client_token,
                    200,
                    Some("ok"),
                    None,
                );
            }
            Event::OtaTask(task) => {
                assert_eq!(dev.ota_task_id(), Some(task.task_id));
                let t = Instant::from_millis(now);
                let _ = dev.report_ota(t, OtaReport::Ongoing { progress: 50 });
                let _ = dev.report_ota(t, OtaReport::Done);
            }
            Event::SubscribeFailed { .. } => panic!("broker refused a subscription"),
            _ => {}
        }
    }

    /// Reports dirty shadows (retry-later: a failed report leaves the shadow dirty).
    pub(crate) fn tick(&mut self, dev: &mut Dev<'_>, now: u64) {
        for s in 0..2 {
            if self.dirty[s] && !self.report_in_flight[s] {
                let shadow = dev.shadow_id(SHADOWS[s]).unwrap();
                if let Ok(id) = dev.report(Instant::from_millis(now), shadow, &self.state[s]) {
                    self.pending.insert(id, (now, Pending::Report(s)));
                    self.dirty[s] = false;
                    self.report_in_flight[s] = true;
                }
            }
        }
    }
}
