//! The state shared by the runner and the client, and the client handle.

use core::cell::RefCell;

use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::signal::Signal;

use super::now;
use crate::fmt::{debug, warning};
use crate::{Device, Event, Instant};

/// One received message (topic then payload), copied out of minimq's buffer for the client;
/// or, for a message that did not fit, its topic (when that fits) and the size it needed.
pub(super) struct Inbox<const N: usize> {
    buf: [u8; N],
    topic_len: usize,
    len: usize,
    full: bool,
    /// Set when the message did not fit: the bytes it needed (topic plus payload).
    too_large: Option<usize>,
}

/// What the inbox holds.
#[derive(Debug, PartialEq, Eq)]
enum Held<'i> {
    Message(&'i str, &'i [u8]),
    /// A message that did not fit: its topic (empty when that did not fit either) and the
    /// bytes it needed.
    TooLarge(&'i str, usize),
}

impl<const N: usize> Inbox<N> {
    const fn new() -> Self {
        Inbox {
            buf: [0; N],
            topic_len: 0,
            len: 0,
            full: false,
            too_large: None,
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
        self.too_large = None;
        true
    }

    /// Stores a message, or when it does not fit its topic (if that fits) and the size it
    /// needed, so that the client can report it. `false` when it did not fit.
    fn put_or_mark(&mut self, topic: &str, payload: &[u8]) -> bool {
        if self.put(topic, payload) {
            return true;
        }
        let needed = topic.len().saturating_add(payload.len());
        let topic = if topic.len() <= N { topic } else { "" };
        let _ = self.put(topic, b"");
        self.too_large = Some(needed);
        false
    }

    /// What is stored, if anything.
    fn get(&self) -> Option<Held<'_>> {
        if !self.full {
            return None;
        }
        let (t, p) = self.buf.get(..self.len)?.split_at_checked(self.topic_len)?;
        let t = core::str::from_utf8(t).ok()?;
        Some(match self.too_large {
            Some(needed) => Held::TooLarge(t, needed),
            None => Held::Message(t, p),
        })
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
    /// Messages that did not fit the inbox (each also reported as `Event::TooLarge`).
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

    /// Stores a received message for the client, or the fact that it did not fit (the client
    /// reports it as `Event::TooLarge`). `false` when the inbox is still full (wait for
    /// `wake_runner` and try again).
    pub(super) fn deliver(&self, topic: &str, payload: &[u8]) -> bool {
        let stored = self.with(|s| {
            if s.inbox.full {
                return false;
            }
            if !s.inbox.put_or_mark(topic, payload) {
                s.dropped = s.dropped.saturating_add(1);
                warning!(
                    "a message of {} bytes is larger than the inbox ({} bytes)",
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
    /// Events are the device's own ([`Device::poll_event`]: timeouts, NTP results), those
    /// caused by received messages ([`Device::handle_publish`]), and [`Event::TooLarge`] for a
    /// message larger than the inbox ([`Device::handle_too_large`], with the bytes it needed);
    /// messages the device drops are logged at debug level and skipped.
    ///
    /// Cancel-safe: a message is consumed only together with the call of `f`, which runs
    /// synchronously inside the poll that returns `Ready`. So `select(client.next_event(..),
    /// timer)` loses nothing when the timer wins: the message stays in the inbox for the next
    /// call. What is not safe is an `await` inside the application's handling: `f` is a plain
    /// closure, so there is none.
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
                let Some(held) = s.inbox.get() else {
                    return (None, false);
                };
                let event = match held {
                    Held::Message(topic, payload) => s.device.handle_publish(now, topic, payload),
                    Held::TooLarge(topic, needed) => s
                        .device
                        .handle_too_large(now, topic, needed, INBOX)
                        .map(Some),
                };
                let out = match event {
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

    /// How many received messages did not fit the inbox (each was also reported as
    /// [`Event::TooLarge`]).
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
    use super::{Held, Inbox};

    #[test]
    fn inbox_holds_one_message_and_refuses_what_does_not_fit() {
        let mut inbox = Inbox::<16>::new();
        assert_eq!(inbox.get(), None);
        assert!(inbox.put("a/b", b"{\"x\":1}"));
        assert_eq!(inbox.get(), Some(Held::Message("a/b", &b"{\"x\":1}"[..])));
        inbox.full = false;
        assert!(
            !inbox.put("topic/too", b"long payload"),
            "21 bytes do not fit in 16"
        );
        assert_eq!(inbox.get(), None);
        assert!(inbox.put("", b""));
        assert_eq!(inbox.get(), Some(Held::Message("", &b""[..])));
    }

    #[test]
    fn a_message_too_large_leaves_its_topic_and_size() {
        let mut inbox = Inbox::<16>::new();
        assert!(!inbox.put_or_mark("topic/too", b"long payload"));
        assert_eq!(inbox.get(), Some(Held::TooLarge("topic/too", 21)));
        inbox.full = false;
        // A topic longer than the inbox is left out; the size still counts it.
        assert!(!inbox.put_or_mark("a/topic/of/17/byt", b"xy"));
        assert_eq!(inbox.get(), Some(Held::TooLarge("", 19)));
        inbox.full = false;
        // What fits is a message again.
        assert!(inbox.put_or_mark("a/b", b"{}"));
        assert_eq!(inbox.get(), Some(Held::Message("a/b", &b"{}"[..])));
    }
}
