//! [`Thing`]: the connected device handle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use iothub_sdk_nostd::QoS;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::driver::{self, Command};
use crate::error::{ConnectError, Error, Result};
use crate::method::Handler;
use crate::ntp::Ntp;
use crate::options::ThingOptions;
use crate::ota::{Ota, OtaHandler, OtaTask};
use crate::shadow::{Delta, Shadow};

/// Commands waiting for the driver task.
const COMMANDS: usize = 64;
/// User messages buffered per [`Thing::user_messages`] stream before the oldest are dropped.
const USER_MESSAGES: usize = 64;

/// The state of the MQTT connection, from [`Thing::connection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ConnectionState {
    /// Whether the thing is connected now (and its subscriptions acknowledged).
    pub connected: bool,
    /// How many times it connected (1 after [`Thing::connect`], +1 per reconnect).
    pub connects: u64,
    /// Whether the thing was closed (it never reconnects then).
    pub closed: bool,
}

/// A message received on `$iothub/user/things/{thingId}/{rest}` (S-2, application-defined).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserMessage {
    /// The topic levels after the thing id.
    pub rest: String,
    /// The payload, as sent.
    pub payload: bytes::Bytes,
}

/// State shared by the handles and the driver task.
pub(crate) struct Shared {
    pub(crate) thing_id: String,
    pub(crate) shadows: Vec<String>,
    pub(crate) request_timeout: Duration,
    pub(crate) deltas: Vec<watch::Receiver<Option<Delta>>>,
    pub(crate) problems: Vec<watch::Receiver<Option<driver::SyncProblem>>>,
    pub(crate) ota: watch::Receiver<Option<OtaTask>>,
    /// Fixed at connect: registered on the options, so none is missing when calls arrive.
    pub(crate) handlers: HashMap<String, Handler>,
    pub(crate) ota_handler: Option<OtaHandler>,
    pub(crate) conn: watch::Receiver<ConnectionState>,
    /// Never read: only resubscribed, for each [`Thing::user_messages`] stream.
    pub(crate) user: broadcast::Receiver<UserMessage>,
}

/// A thing connected to the hub. Cheap to clone: every clone drives the same connection.
///
/// One background task (spawned by [`Thing::connect`]) owns the MQTT connection and the
/// sans-IO device core ([`iothub_sdk_nostd::Device`]); handles send it commands over a bounded
/// channel and wait for the answer with a timeout. It reconnects by itself with exponential
/// backoff and jitter, resubscribes, and resynchronizes every shadow (get, then only deltas
/// newer than the get's version). Requests in flight when the connection drops fail with
/// [`Error::ConnectionLost`]; requests made while disconnected fail with
/// [`Error::NotConnected`]: nothing is dropped silently, and retrying is the caller's choice.
///
/// The task ends on [`Thing::close`] or when every handle is dropped.
///
/// Cancellation: streams ([`Shadow::deltas`], [`crate::Ota::tasks`], [`Thing::user_messages`],
/// [`crate::SyncedState::next`]) are cancel-safe. A request (`report`, `get`, NTP) whose
/// future is dropped may still reach the hub; only its answer is dropped, as after a timeout.
#[derive(Clone)]
pub struct Thing {
    pub(crate) cmd: mpsc::Sender<Command>,
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Thing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Thing")
            .field("thing_id", &self.shared.thing_id)
            .field("connection", &*self.shared.conn.borrow())
            .finish_non_exhaustive()
    }
}

impl Thing {
    /// Connects to the hub and starts the driver task. Returns once the hub accepted the
    /// connection and acknowledged every subscription (so no method call or delta sent from
    /// then on is missed); the first shadow resynchronization goes on in the background.
    ///
    /// Fails with [`Error::Refused`] when the hub refuses the credentials (not retried), with
    /// [`Error::Connect`] when no connection was made within the connect timeout (its
    /// [`ConnectError`] keeps the cause of the last attempt: refused, DNS, timeout), with
    /// `Error::Tls` (feature `tls`) when the TLS handshake failed for good (the hub's
    /// certificate is not trusted; not retried), and with [`Error::Config`] for invalid options.
    /// Must be called inside a tokio runtime.
    pub async fn connect(options: ThingOptions) -> Result<Thing> {
        options.check()?;
        let (cmd, rx) = mpsc::channel(COMMANDS);
        let (delta_tx, delta_rx) = (0..options.shadows.len())
            .map(|_| watch::channel(None))
            .unzip();
        let (problem_tx, problem_rx) = (0..options.shadows.len())
            .map(|_| watch::channel(None))
            .unzip();
        let (ota_tx, ota_rx) = watch::channel(None);
        let (conn_tx, conn_rx) = watch::channel(ConnectionState::default());
        let (user_tx, user_rx) = broadcast::channel(USER_MESSAGES);
        let shared = Arc::new(Shared {
            thing_id: options.thing_id.clone(),
            shadows: options.shadows.clone(),
            request_timeout: options.request_timeout,
            deltas: delta_rx,
            problems: problem_rx,
            ota: ota_rx,
            handlers: options.handlers.clone(),
            ota_handler: options.ota_handler.clone(),
            conn: conn_rx,
            user: user_rx,
        });
        let senders = driver::Senders {
            deltas: delta_tx,
            problems: problem_tx,
            ota: ota_tx,
            conn: conn_tx,
            user: user_tx,
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let deadline = options.connect_timeout + Duration::from_secs(1);
        tokio::spawn(driver::run(
            options,
            shared.clone(),
            senders,
            rx,
            cmd.downgrade(),
            ready_tx,
        ));
        match tokio::time::timeout(deadline, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Thing { cmd, shared }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::Closed),
            // The driver gives up at the connect deadline with the cause; this only guards
            // against a stuck driver.
            Err(_) => Err(Error::Connect(ConnectError::Timeout(deadline))),
        }
    }

    /// The thing id.
    pub fn thing_id(&self) -> &str {
        &self.shared.thing_id
    }

    /// A handle on the shadow `name`, which must be one of [`ThingOptions::shadows`] (calls on
    /// another name fail with [`Error::UnknownShadow`]).
    pub fn shadow(&self, name: &str) -> Shadow {
        let id = self.shared.shadows.iter().position(|s| s == name);
        Shadow {
            thing: self.clone(),
            name: name.to_owned(),
            id,
        }
    }

    /// NTP with the hub (S-6).
    pub fn ntp(&self) -> Ntp {
        Ntp {
            thing: self.clone(),
            samples: 4,
        }
    }

    /// OTA tasks (S-7).
    pub fn ota(&self) -> Ota {
        Ota {
            thing: self.clone(),
        }
    }

    /// Sends telemetry (a JSON object) on `T/messages/property` at QoS 1, forwarded by the hub
    /// to service users. Returns once it is handed to the connection.
    pub async fn send_telemetry<V: Serialize + ?Sized>(&self, value: &V) -> Result<()> {
        let value = serde_json::to_value(value)?;
        if !value.is_object() {
            return Err(Error::InvalidArgument("telemetry must be a JSON object"));
        }
        self.request(|reply| Command::Telemetry {
            value,
            qos: QoS::AtLeastOnce,
            reply,
        })
        .await
    }

    /// Publishes `payload` on `$iothub/user/things/{thingId}/{rest}` at QoS 1 (S-2: free,
    /// application-defined). `rest` is one or more non-empty topic levels without wildcards.
    pub async fn publish_user(&self, rest: &str, payload: impl Into<Vec<u8>>) -> Result<()> {
        let payload = payload.into();
        let rest = rest.to_owned();
        self.request(|reply| Command::User {
            rest,
            payload,
            reply,
        })
        .await
    }

    /// Messages received on the thing's user topics; needs [`ThingOptions::user_topics`].
    /// Each stream buffers 64 messages: a stream that falls further behind skips the oldest
    /// (logged as a warning).
    pub fn user_messages(&self) -> impl Stream<Item = UserMessage> + Send + Unpin + 'static {
        let rx = self.shared.user.resubscribe();
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(m) => return Some((m, rx)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "user message stream lagging");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }

    /// The connection state now.
    pub fn connection_state(&self) -> ConnectionState {
        *self.shared.conn.borrow()
    }

    /// A watch on the connection state, to follow reconnects.
    pub fn connection(&self) -> watch::Receiver<ConnectionState> {
        self.shared.conn.clone()
    }

    /// Whether the thing is connected now.
    pub fn is_connected(&self) -> bool {
        self.shared.conn.borrow().connected
    }

    /// Waits until the thing is connected, at most `timeout` ([`Error::Timeout`]).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.shared.conn.clone();
        let wait = rx.wait_for(|s| s.connected || s.closed);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) if s.connected => Ok(()),
            Ok(_) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Disconnects cleanly (MQTT DISCONNECT) and stops the driver task. Requests still waiting
    /// fail with [`Error::Closed`]; every stream ends.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.cmd.send(Command::Close { reply }).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    /// Sends a command and waits for its answer, bounded by twice the request timeout.
    pub(crate) async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        self.request_for(self.shared.request_timeout, make).await
    }

    /// Like [`Thing::request`] with an explicit budget (the driver's own timeouts fire first;
    /// this bound only guards against a stuck driver).
    pub(crate) async fn request_for<T>(
        &self,
        budget: Duration,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        let limit = budget * 2 + Duration::from_secs(1);
        let (reply, rx) = oneshot::channel();
        let send = self.cmd.send_timeout(make(reply), limit);
        match send.await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => return Err(Error::Timeout(limit)),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => return Err(Error::Closed),
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(limit)),
        }
    }
}
