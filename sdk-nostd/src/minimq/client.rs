//! The state shared by the runner and the client, and the client handle.

use core::cell::RefCell;

use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::signal::Signal;

use super::now;
use crate::fmt::{debug, warning};
use crate::{Device, Event, Instant};

/// One received message (topic then payload), copied out of minimq's buffer for the client.
pub(super) struct Inbox<const N: usize> {
    buf: [u8; N],
    topic_len: usize,
    len: usize,
    full: bool,
}

impl<const N: usize> Inbox<N> {
    const fn new() -> Self {
        Inbox {
            buf: [0; N],
            topic_len: 0,
            len: 0,
            full: false,
        }
    }

    /// Stores a message; `false` when it does not fit at all (it is dropped).
    fn put(&mut self, topic: &str, payload: &[u8]) -> bool {
        let t = topic.len();
        let total = t.saturating_add(payload.len());
        let Some((tb, pb)) = self
            .buf
            .get_mut(..total)
            .and_then(|dst| dst.split_at_mut_checked(t))
        else {
            return false;
        };
        // Equal lengths by construction; a zip has no length-mismatch panic path.
        tb.iter_mut()
            .zip(topic.as_bytes())
            .for_each(|(d, s)| *d = *s);
        pb.iter_mut().zip(payload).for_each(|(d, s)| *d = *s);
        self.topic_len = t;
        self.len = total;
        self.full = true;
        true
    }

    /// The stored message, if any.
    fn get(&self) -> Option<(&str, &[u8])> {
        if !self.full {
            return None;
        }
        let (t, p) = self.buf.get(..self.len)?.split_at_checked(self.topic_len)?;
        Some((core::str::from_utf8(t).ok()?, p))
    }
}

pub(super) struct Shared<
    'a,
    const SHADOWS: usize,
    const IN_FLIGHT: usize,
    const QUEUE: usize,
    const INBOX: usize,
> {
    pub(super) device: Device<'a, SHADOWS, IN_FLIGHT, QUEUE>,
    inbox: Inbox<INBOX>,
    pub(super) connected: bool,
    /// Messages dropped because they did not fit the inbox.
    pub(super) dropped: u32,
}

/// What the [`super::Runner`] and the [`Client`] share: the [`Device`], a one-message inbox of
/// `INBOX` bytes (see the module's sizing rules) and two wake-up signals.
///
/// `M` is the mutex flavour: `NoopRawMutex` when the runner and the client run on one executor
/// (the usual case, and the cheapest); `CriticalSectionRawMutex` only when they run in different
/// executors or interrupt priorities. With the latter, the closures given to
/// [`Client::command`] and [`Client::next_event`] run inside a critical section (interrupts off
/// on a single-core MCU), so keep them short.
pub struct State<
    'a,
    M: RawMutex,
    const SHADOWS: usize = 2,
    const IN_FLIGHT: usize = 10,
    const QUEUE: usize = 8,
    const INBOX: usize = 2048,
> {
    shared: Mutex<M, RefCell<Shared<'a, SHADOWS, IN_FLIGHT, QUEUE, INBOX>>>,
    pub(super) wake_runner: Signal<M, ()>,
    pub(super) wake_client: Signal<M, ()>,
}

impl<
    'a,
    M: RawMutex,
    const SHADOWS: usize,
    const IN_FLIGHT: usize,
    const QUEUE: usize,
    const INBOX: usize,
> State<'a, M, SHADOWS, IN_FLIGHT, QUEUE, INBOX>
{
    /// Wraps a device (built with [`Device::new`]) for the runner and the client.
    pub const fn new(device: Device<'a, SHADOWS, IN_FLIGHT, QUEUE>) -> Self {
        State {
            shared: Mutex::new(RefCell::new(Shared {
                device,
                inbox: Inbox::new(),
                connected: false,
                dropped: 0,
            })),
            wake_runner: Signal::new(),
            wake_client: Signal::new(),
        }
    }

    /// Runs `f` on the shared part. Never re-entered: the closures given to it do not call back
    /// into the state (the application's closures get a `&mut Device`, not the client).
    pub(super) fn with<R>(
        &self,
        f: impl FnOnce(&mut Shared<'a, SHADOWS, IN_FLIGHT, QUEUE, INBOX>) -> R,
    ) -> R {
        self.shared.lock(|cell| f(&mut cell.borrow_mut()))
    }

    /// Stores a received message for the client. `false` when the inbox is still full (wait for
    /// `wake_runner` and try again).
    pub(super) fn deliver(&self, topic: &str, payload: &[u8]) -> bool {
        let stored = self.with(|s| {
            if s.inbox.full {
                return false;
            }
            if !s.inbox.put(topic, payload) {
                s.dropped = s.dropped.saturating_add(1);
                warning!(
                    "dropped a message of {} bytes: larger than the inbox ({} bytes)",
                    topic.len().saturating_add(payload.len()),
                    INBOX
                );
            }
            true
        });
        if stored {
            self.wake_client.signal(());
        }
        stored
    }
}

/// The application's handle: commands go to the [`Device`], events come from it. Build it with
/// [`super::Runner::new`].
pub struct Client<
    's,
    'a,
    M: RawMutex,
    const SHADOWS: usize = 2,
    const IN_FLIGHT: usize = 10,
    const QUEUE: usize = 8,
    const INBOX: usize = 2048,
> {
    pub(super) state: &'s State<'a, M, SHADOWS, IN_FLIGHT, QUEUE, INBOX>,
}

impl<
    'a,
    M: RawMutex,
    const SHADOWS: usize,
    const IN_FLIGHT: usize,
    const QUEUE: usize,
    const INBOX: usize,
> Client<'_, 'a, M, SHADOWS, IN_FLIGHT, QUEUE, INBOX>
{
    /// Runs an application command on the device (`report`, `respond`, `request_ntp`,
    /// `report_ota`, `publish_telemetry`, ...) with the current time, then wakes the runner to
    /// send what it queued. For example
    /// `let id = client.command(|dev, now| dev.request_ntp(now, 4))?;`.
    ///
    /// `f` must not call the client again (the state is locked while it runs).
    pub fn command<R>(
        &self,
        f: impl FnOnce(&mut Device<'a, SHADOWS, IN_FLIGHT, QUEUE>, Instant) -> R,
    ) -> R {
        let r = self.state.with(|s| f(&mut s.device, now()));
        self.state.wake_runner.signal(());
        r
    }

    /// Waits for the next event of the device and hands it to `f` together with the device, so
    /// that `f` can answer at once (apply a delta and `report`, `respond` to a method); what it
    /// queues is sent when it returns. Returns what `f` returns.
    ///
    /// Events are the device's own ([`Device::poll_event`]: timeouts, NTP results) and those
    /// caused by received messages ([`Device::handle_publish`]); messages the device drops are
    /// logged at debug level and skipped. Cancel-safe: a message is consumed only together with
    /// the call of `f`.
    ///
    /// `f` must not call the client again (the state is locked while it runs).
    pub async fn next_event<R>(
        &mut self,
        f: impl FnOnce(Event<'_>, &mut Device<'a, SHADOWS, IN_FLIGHT, QUEUE>, Instant) -> R,
    ) -> R {
        let mut f = Some(f);
        loop {
            let (out, consumed) = self.state.with(|s| {
                let now = now();
                if let Some(event) = s.device.poll_event() {
                    return (f.take().map(|f| f(event, &mut s.device, now)), false);
                }
                let Some((topic, payload)) = s.inbox.get() else {
                    return (None, false);
                };
                let out = match s.device.handle_publish(now, topic, payload) {
                    Ok(Some(event)) => f.take().map(|f| f(event, &mut s.device, now)),
                    Ok(None) => None,
                    Err(why) => {
                        debug!("message ignored: {}", why.as_str());
                        None
                    }
                };
                s.inbox.full = false;
                (out, true)
            });
            if consumed || out.is_some() {
                // The inbox is free again, or something may have been queued.
                self.state.wake_runner.signal(());
            }
            if let Some(out) = out {
                return out;
            }
            if !consumed {
                self.state.wake_client.wait().await;
            }
        }
    }

    /// Whether the MQTT connection is up (CONNACK received, not yet lost).
    pub fn is_connected(&self) -> bool {
        self.state.with(|s| s.connected)
    }

    /// How many received messages were dropped because they did not fit the inbox.
    pub fn dropped(&self) -> u32 {
        self.state.with(|s| s.dropped)
    }
}

impl<
    M: RawMutex,
    const SHADOWS: usize,
    const IN_FLIGHT: usize,
    const QUEUE: usize,
    const INBOX: usize,
> core::fmt::Debug for Client<'_, '_, M, SHADOWS, IN_FLIGHT, QUEUE, INBOX>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::Inbox;

    #[test]
    fn inbox_holds_one_message_and_refuses_what_does_not_fit() {
        let mut inbox = Inbox::<16>::new();
        assert_eq!(inbox.get(), None);
        assert!(inbox.put("a/b", b"{\"x\":1}"));
        assert_eq!(inbox.get(), Some(("a/b", &b"{\"x\":1}"[..])));
        inbox.full = false;
        assert!(
            !inbox.put("topic/too", b"long payload"),
            "21 bytes do not fit in 16"
        );
        assert_eq!(inbox.get(), None);
        assert!(inbox.put("", b""));
        assert_eq!(inbox.get(), Some(("", &b""[..])));
    }
}
