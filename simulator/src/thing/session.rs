//! The connected session of a virtual thing: its loop (behaviour ticks, keep-alive, reads,
//! phase changes) and the bridge between MQTT packets and the device core (transmits encoded,
//! PUBLISHes and SUBACKs handed in, events drained, in-flight requests failed on a close).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use iothub_sdk_nostd::{Ignored, Transmit};
use tokio::time::Instant;

use super::link::Link;
use super::{Core, DRAIN, End, SCRATCH, Thing, dev_now};
use crate::fleet::Phase;
use crate::mqtt::Incoming;

/// What ended a session loop's wait.
enum Woke {
    /// A read: the bytes read, 0 at the end of the stream.
    Read(std::io::Result<usize>),
    Timer,
    /// The run's phase changed (false: its sender is gone).
    Phase(bool),
}

impl Thing {
    /// Drains the core: every transmit encoded into the write buffer, every event handled.
    pub(super) fn pump(&mut self, device: &mut Core<'_>) {
        let now = dev_now(&self.fleet);
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            loop {
                let t = match device.poll_transmit(now, &mut scratch) {
                    Ok(Some(t)) => t,
                    Ok(None) => break,
                    Err(e) => {
                        self.stats()
                            .protocol_errors
                            .add(format!("poll_transmit: {e}"));
                        break;
                    }
                };
                let r = match t {
                    Transmit::Subscribe { id, filter, qos } => {
                        let pkid = self.pkid();
                        let _ = self.subs.push((pkid, id));
                        self.codec.subscribe(pkid, filter, qos, &mut self.wbuf)
                    }
                    Transmit::Publish {
                        topic,
                        payload,
                        qos,
                    } => {
                        let pkid = self.pkid();
                        self.track_telemetry(topic, qos, pkid);
                        self.codec
                            .publish(topic, payload, qos, pkid, &mut self.wbuf)
                    }
                    _ => Ok(()),
                };
                if let Err(e) = r {
                    self.stats().protocol_errors.add(e.to_string());
                }
            }
        });
        self.drain_events(device);
    }

    pub(super) fn drain_events(&mut self, device: &mut Core<'_>) {
        while let Some(ev) = device.poll_event() {
            self.on_event(device, ev);
        }
    }

    /// One PUBLISH from the hub: PUBACK it, hand it to the core, act on the event.
    pub(super) fn on_publish(
        &mut self,
        device: &mut Core<'_>,
        topic: &[u8],
        payload: &[u8],
        pkid: Option<u16>,
    ) {
        if let Some(pkid) = pkid
            && let Err(e) = self.codec.puback(pkid, &mut self.wbuf)
        {
            self.stats().protocol_errors.add(e.to_string());
        }
        let Ok(topic) = std::str::from_utf8(topic) else {
            self.stats().protocol_errors.add("topic not utf-8");
            return;
        };
        match device.handle_publish(dev_now(&self.fleet), topic, payload) {
            Ok(Some(ev)) => self.on_event(device, ev),
            Ok(None) => {}
            Err(Ignored::Unmatched) => self.stats().ignored.add("late or unmatched reply"),
            Err(Ignored::Stale) => self.stats().ignored.add("stale delta or document"),
            Err(Ignored::Echo) => {}
            Err(Ignored::Duplicate) => self.stats().ignored.add("ota task sent again"),
            Err(other) => self
                .stats()
                .protocol_errors
                .add(format!("dropped by the core: {other}")),
        }
    }

    /// The connection ended: the core fails what was in flight; those are aborted, not lost.
    pub(super) fn closed(&mut self, device: &mut Core<'_>) {
        if self.fleet.slots[self.index]
            .connected
            .swap(false, Ordering::Relaxed)
        {
            self.stats().connected.dec();
        }
        device.handle_disconnected(dev_now(&self.fleet));
        self.abort_in_flight();
        for _ in 0..self.telemetry_in_flight.len() {
            self.fleet.stats.telemetry_unacked.inc();
        }
        self.telemetry_in_flight.clear();
        self.ntp = None;
        self.drain_events(device);
        self.answers.clear();
        self.subs.clear();
        self.rbuf = BytesMut::new();
        self.wbuf = BytesMut::new();
    }

    pub(super) fn abort_in_flight(&mut self) {
        for _ in 0..self.in_flight.len() {
            self.fleet.stats.updates_aborted.inc();
        }
        self.in_flight.clear();
    }

    /// The connected life of the thing: behaviours, reads, timers, until stop, churn or loss.
    pub(super) async fn session(
        &mut self,
        device: &mut Core<'_>,
        mut stream: Link,
        phase: &mut tokio::sync::watch::Receiver<Phase>,
    ) -> End {
        self.fleet.slots[self.index]
            .connected
            .store(true, Ordering::Relaxed);
        self.stats().connected.inc();
        self.next_churn = None;
        self.arm(*phase.borrow());
        self.send_boot_report(device);
        let keep_alive = Duration::from_secs(u64::from(self.fleet.scenario.profile.keep_alive_s));
        loop {
            // Everything due now.
            let now = Instant::now();
            let current = *phase.borrow();
            if current == Phase::Stop && self.stop_by.is_none() {
                self.stop_by = Some(now + DRAIN);
                self.next_report = None;
                self.next_telemetry = None;
                self.next_ntp = None;
                self.next_churn = None;
            }
            if let Some(end) = self.tick(device, now, current) {
                if matches!(end, End::Stopped | End::Churned) {
                    let _ = self.codec.disconnect(&mut self.wbuf);
                    let _ = self.write(&mut stream).await;
                }
                return end;
            }
            if now - self.last_write >= keep_alive / 2 {
                let _ = self.codec.ping(&mut self.wbuf);
            }
            if self.write(&mut stream).await.is_err() {
                self.stats().connect_errors.add("connection lost: write");
                self.stats().lost.inc();
                return End::Lost;
            }
            if now - self.last_read > keep_alive + keep_alive / 2 {
                self.stats()
                    .connect_errors
                    .add("connection lost: keep-alive timeout");
                self.stats().lost.inc();
                return End::Lost;
            }
            let wake = self.next_wake(device, keep_alive);
            // The read buffer is lent to the read for the wait (the other branches need `self`).
            let mut rbuf = std::mem::take(&mut self.rbuf);
            let woke = tokio::select! {
                r = stream.read_into(&mut rbuf) => Woke::Read(r),
                _ = tokio::time::sleep_until(wake) => Woke::Timer,
                r = phase.changed() => Woke::Phase(r.is_ok()),
            };
            self.rbuf = rbuf;
            match woke {
                Woke::Read(r) => {
                    if !self.read_packets(device, r) {
                        self.stats().lost.inc();
                        return End::Lost;
                    }
                }
                Woke::Timer => self.release_rbuf(),
                Woke::Phase(false) => return End::Stopped,
                Woke::Phase(true) => {
                    self.release_rbuf();
                    let p = *phase.borrow();
                    self.arm(p);
                }
            }
        }
    }

    /// Handles every whole packet after a read of `read` bytes; false when the connection is
    /// over.
    fn read_packets(&mut self, device: &mut Core<'_>, read: std::io::Result<usize>) -> bool {
        match read {
            Ok(n) if n > 0 => self.last_read = Instant::now(),
            Ok(_) => {
                self.stats()
                    .connect_errors
                    .add("connection lost: closed by the hub");
                return false;
            }
            Err(e) => {
                self.stats()
                    .connect_errors
                    .add(format!("connection lost: {:?}", e.kind()));
                return false;
            }
        }
        loop {
            match self.codec.read(&mut self.rbuf) {
                Ok(Some(Incoming::Publish {
                    topic,
                    payload,
                    pkid,
                })) => self.on_publish(device, &topic, &payload, pkid),
                Ok(Some(Incoming::SubAck { pkid, granted })) => {
                    if let Some(pos) = self.subs.iter().position(|(p, _)| *p == pkid) {
                        let (_, id) = self.subs.swap_remove(pos);
                        device.handle_suback(dev_now(&self.fleet), id, granted);
                    }
                }
                Ok(Some(Incoming::PubAck { pkid, reason })) => {
                    if reason >= 0x80 {
                        self.stats()
                            .protocol_errors
                            .add(format!("puback 0x{reason:02x}"));
                    }
                    self.on_puback(pkid, reason < 0x80);
                }
                Ok(Some(Incoming::PingResp)) => {}
                Ok(Some(Incoming::Disconnect)) => {
                    self.stats()
                        .connect_errors
                        .add("connection lost: disconnect from the hub");
                    return false;
                }
                Ok(Some(Incoming::ConnAck { .. })) => {
                    self.stats().protocol_errors.add("second connack");
                }
                Ok(Some(Incoming::Unexpected(what))) => self.stats().protocol_errors.add(what),
                Ok(None) => break,
                Err(e) => {
                    self.stats().protocol_errors.add(e.to_string());
                    return false;
                }
            }
        }
        self.release_rbuf();
        self.pump(device);
        true
    }
}
