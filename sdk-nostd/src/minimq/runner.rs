//! The runner: owns the MQTT connection and feeds the core.

use embassy_futures::select::{Either3, select3};
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_time::{Duration, Timer, with_timeout};
use minimq::{
    ConfigBuilder, ConnectEvent, Connection, Error as MqttError, Io, PubError, Publication,
    Session, SubscriptionOptions, TopicFilter,
};

use super::client::{Client, State};
use super::{Buffers, Transport, now};
use crate::fmt::{debug, info, warning};
use crate::{QoS, Transmit};

/// Connection settings of the [`Runner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MqttConfig<'r> {
    /// The MQTT user name: the thing id (S-1.2).
    pub username: &'r str,
    /// The thing's secret.
    pub password: &'r [u8],
    /// MQTT keepalive in seconds (default 30).
    pub keepalive_s: u16,
    /// Longest wait for the transport to connect and for CONNACK (default 10 s).
    pub connect_timeout_ms: u64,
    /// First reconnect delay (default 500 ms); doubled after every failed attempt...
    pub backoff_min_ms: u64,
    /// ...up to this (default 30 s). Each delay is drawn uniformly from its upper half (jitter).
    pub backoff_max_ms: u64,
    /// How long a connection must have lasted for the next reconnect to start from
    /// `backoff_min_ms` again (default 20 s). A connection that the broker closes right after
    /// CONNACK (a message larger than minimq's `rx` makes rmqtt close it, see the module's
    /// sizing rules) therefore backs off like a refused one instead of reconnecting at once.
    pub stable_after_ms: u64,
    /// How long a message may wait for room in minimq's `tx` (acks outstanding) before the
    /// connection is given up (default 10 s).
    pub stall_timeout_ms: u64,
    /// Seed of the jitter (take it from an RNG or a unique id so that devices differ).
    pub jitter_seed: u32,
}

impl<'r> MqttConfig<'r> {
    /// Defaults for the thing `username` with secret `password`.
    pub const fn new(username: &'r str, password: &'r [u8]) -> Self {
        MqttConfig {
            username,
            password,
            keepalive_s: 30,
            connect_timeout_ms: 10_000,
            backoff_min_ms: 500,
            backoff_max_ms: 30_000,
            stable_after_ms: 20_000,
            stall_timeout_ms: 10_000,
            jitter_seed: 0x1d5e_ed01,
        }
    }
}

/// Why a connection ended (logged, then the runner reconnects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Down {
    Transport,
    Handshake,
    Mqtt,
    Stalled,
    Core,
}

impl Down {
    const fn as_str(self) -> &'static str {
        match self {
            Down::Transport => "transport connect failed",
            Down::Handshake => "mqtt connect failed",
            Down::Mqtt => "connection lost",
            Down::Stalled => "no room to send",
            Down::Core => "transmit did not fit the out buffer",
        }
    }
}

/// Owns the connection: connect, CONNACK, keepalive, moving messages between minimq and the
/// [`Device`](crate::Device), its timers, and reconnecting with backoff and jitter. Call
/// [`Runner::run`] in its own task (it never returns) or join it with the application.
pub struct Runner<
    's,
    'a,
    'r,
    T: Transport,
    M: RawMutex,
    const SHADOWS: usize = 2,
    const IN_FLIGHT: usize = 10,
    const QUEUE: usize = 8,
    const INBOX: usize = 2048,
> {
    state: &'s State<'a, M, SHADOWS, IN_FLIGHT, QUEUE, INBOX>,
    transport: T,
    session: Session<'r>,
    out: &'r mut [u8],
    config: MqttConfig<'r>,
    rng: u32,
}

impl<
    's,
    'a,
    'r,
    T: Transport,
    M: RawMutex,
    const SHADOWS: usize,
    const IN_FLIGHT: usize,
    const QUEUE: usize,
    const INBOX: usize,
> Runner<'s, 'a, 'r, T, M, SHADOWS, IN_FLIGHT, QUEUE, INBOX>
{
    /// The client and the runner for the device in `state`, connecting through `transport`.
    /// The MQTT client id is the device's thing id.
    ///
    /// Fails when minimq refuses the settings (a client id or credentials too long for it).
    #[allow(clippy::type_complexity)]
    pub fn new(
        state: &'s State<'a, M, SHADOWS, IN_FLIGHT, QUEUE, INBOX>,
        transport: T,
        buffers: Buffers<'r>,
        config: MqttConfig<'r>,
    ) -> Result<(Client<'s, 'a, M, SHADOWS, IN_FLIGHT, QUEUE, INBOX>, Self), minimq::ConfigError>
    {
        let Buffers { rx, tx, out } = buffers;
        let thing = state.with(|s| s.device.config().thing_id);
        let builder = ConfigBuilder::new(minimq::Buffers::new(rx, tx))
            .client_id(thing)?
            .auth(config.username, config.password)?
            .keepalive_interval(config.keepalive_s);
        let runner = Runner {
            state,
            transport,
            session: Session::new(builder),
            out,
            config,
            rng: config.jitter_seed | 1,
        };
        Ok((Client { state }, runner))
    }

    /// Runs forever: connects, serves the connection until it fails, waits (backoff with
    /// jitter), connects again.
    pub async fn run(mut self) -> ! {
        let mut attempt: u32 = 0;
        loop {
            let (why, since) = self.connect_and_serve().await;
            let t = now();
            let lasted = since.map(|since| t.millis_since(since));
            attempt = attempt_after(attempt, lasted, self.config.stable_after_ms);
            if lasted.is_some() {
                info!("mqtt connection ended: {}", why.as_str());
                if attempt >= 2 {
                    warning!(
                        "mqtt connection lost {} times in a row within {} ms of CONNACK; \
                         a message larger than the rx buffer is a common cause",
                        attempt.saturating_add(1),
                        self.config.stable_after_ms
                    );
                }
            }
            self.state.with(|s| {
                s.device.handle_disconnected(t);
                s.connected = false;
            });
            self.state.wake_client.signal(());
            let delay = self.backoff(attempt);
            attempt = attempt.saturating_add(1);
            debug!("reconnecting in {} ms", delay);
            Timer::after(Duration::from_millis(delay)).await;
        }
    }

    fn backoff(&mut self, attempt: u32) -> u64 {
        let (min, max) = (self.config.backoff_min_ms, self.config.backoff_max_ms);
        backoff_ms(min, max, attempt, &mut self.rng)
    }

    /// One connection: why it ended, and when CONNACK arrived (`None` when it never did).
    async fn connect_and_serve(&mut self) -> (Down, Option<crate::Instant>) {
        let limit = Duration::from_millis(self.config.connect_timeout_ms);
        let io = match with_timeout(limit, self.transport.connect()).await {
            Ok(Ok(io)) => io,
            _ => {
                debug!("transport connect failed");
                return (Down::Transport, None);
            }
        };
        let mut conn = match with_timeout(limit, self.session.connect(io)).await {
            Ok(Ok(conn)) => conn,
            _ => {
                warning!("mqtt connect to the broker failed");
                return (Down::Handshake, None);
            }
        };
        let resumed = conn.connect_event() == ConnectEvent::Reconnected;
        let t = now();
        self.state.with(|s| {
            s.device.handle_connected(t, resumed);
            s.connected = true;
        });
        self.state.wake_client.signal(());
        info!("mqtt connected (session resumed: {})", resumed);
        let stall = Duration::from_millis(self.config.stall_timeout_ms);
        (serve(&mut conn, self.state, self.out, stall).await, Some(t))
    }
}

/// The attempt number of the next backoff: back to 0 only after a connection that lasted
/// `stable_after_ms` (`lasted_ms` is `None` when no connection came up), so that a broker that
/// closes every connection soon after CONNACK is not hammered.
fn attempt_after(attempt: u32, lasted_ms: Option<u64>, stable_after_ms: u64) -> u32 {
    match lasted_ms {
        Some(lasted) if lasted >= stable_after_ms => 0,
        _ => attempt,
    }
}

/// Delay before attempt `attempt + 1`: `min * 2^attempt` capped at `max`, then drawn uniformly
/// from its upper half (jitter, so that devices cut off together do not return together).
fn backoff_ms(min: u64, max: u64, attempt: u32, rng: &mut u32) -> u64 {
    let cap = min.saturating_mul(1u64 << attempt.min(20)).min(max).max(1);
    // xorshift32: jitter needs no more.
    let mut x = *rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *rng = x;
    let half = cap / 2;
    half.saturating_add(u64::from(x) % (cap.saturating_sub(half).saturating_add(1)))
}

fn qos(q: QoS) -> minimq::QoS {
    match q {
        QoS::AtMostOnce => minimq::QoS::AtMostOnce,
        QoS::AtLeastOnce => minimq::QoS::AtLeastOnce,
    }
}

/// How long a timer the core could not act on waits before it fires again.
const RETIMER_MS: u64 = 20;

/// Serves one connection until it fails.
async fn serve<
    IO: Io,
    M: RawMutex,
    const SHADOWS: usize,
    const IN_FLIGHT: usize,
    const QUEUE: usize,
    const INBOX: usize,
>(
    conn: &mut Connection<'_, '_, IO>,
    state: &State<'_, M, SHADOWS, IN_FLIGHT, QUEUE, INBOX>,
    out: &mut [u8],
    stall: Duration,
) -> Down {
    // When the core's timer last fired: a deadline not later than that is one the core could not
    // act on yet (a retry waiting for a free request slot), so it is pushed out a little instead
    // of spinning.
    let mut fired: Option<crate::Instant> = None;
    loop {
        // Everything the core wants sent, in its order.
        loop {
            let t = now();
            let buf: &mut [u8] = &mut *out;
            let transmit = state.with(move |s| s.device.poll_transmit(t, buf));
            let sent = match transmit {
                Ok(None) => break,
                Ok(Some(Transmit::Subscribe { filter, qos: q, .. })) => {
                    let options = SubscriptionOptions::default().maximum_qos(qos(q));
                    let filters = [TopicFilter::new(filter).options(options)];
                    subscribe(conn, state, &filters, stall).await
                }
                Ok(Some(Transmit::Publish {
                    topic,
                    payload,
                    qos: q,
                })) => publish(conn, state, topic, payload, qos(q), stall).await,
                Err(_) => Err(Down::Core),
            };
            if let Err(why) = sent {
                return why;
            }
        }
        // Then wait for the broker, the application or the core's next timer.
        let deadline = state
            .with(|s| s.device.poll_timeout())
            .map(|d| match fired {
                Some(f) if d <= f => f.add_millis(RETIMER_MS),
                _ => d,
            });
        let timer = async {
            match deadline {
                Some(d) => Timer::at(embassy_time::Instant::from_millis(d.as_millis())).await,
                None => core::future::pending().await,
            }
        };
        match select3(conn.poll(), state.wake_runner.wait(), timer).await {
            Either3::First(Ok(Some(message))) => {
                deliver(state, message.topic(), message.payload()).await;
            }
            Either3::First(Ok(None)) | Either3::Second(()) => {}
            Either3::First(Err(_)) => return Down::Mqtt,
            Either3::Third(()) => {
                let t = now();
                state.with(|s| s.device.handle_timeout(t));
                fired = Some(t);
                state.wake_client.signal(());
            }
        }
    }
}

/// Hands a received message to the client, waiting while the inbox is still full.
async fn deliver<
    M: RawMutex,
    const SHADOWS: usize,
    const IN_FLIGHT: usize,
    const QUEUE: usize,
    const INBOX: usize,
>(
    state: &State<'_, M, SHADOWS, IN_FLIGHT, QUEUE, INBOX>,
    topic: &str,
    payload: &[u8],
) {
    while !state.deliver(topic, payload) {
        state.wake_runner.wait().await;
    }
}

/// Lets minimq make progress (acks, keepalive) while an operation waits for room in `tx`,
/// passing on what arrives meanwhile. `Err` when the connection failed or nothing freed up in
/// `stall`.
async fn make_room<
    IO: Io,
    M: RawMutex,
    const SHADOWS: usize,
    const IN_FLIGHT: usize,
    const QUEUE: usize,
    const INBOX: usize,
>(
    conn: &mut Connection<'_, '_, IO>,
    state: &State<'_, M, SHADOWS, IN_FLIGHT, QUEUE, INBOX>,
    stall: Duration,
) -> Result<(), Down> {
    match with_timeout(stall, conn.poll()).await {
        Ok(Ok(Some(message))) => {
            deliver(state, message.topic(), message.payload()).await;
            Ok(())
        }
        Ok(Ok(None)) => Ok(()),
        Ok(Err(_)) => Err(Down::Mqtt),
        Err(_) => Err(Down::Stalled),
    }
}

async fn subscribe<
    IO: Io,
    M: RawMutex,
    const SHADOWS: usize,
    const IN_FLIGHT: usize,
    const QUEUE: usize,
    const INBOX: usize,
>(
    conn: &mut Connection<'_, '_, IO>,
    state: &State<'_, M, SHADOWS, IN_FLIGHT, QUEUE, INBOX>,
    filters: &[TopicFilter<'_>],
    stall: Duration,
) -> Result<(), Down> {
    loop {
        match conn.subscribe(filters, &[]).await {
            Ok(_) => return Ok(()),
            Err(MqttError::NotReady | MqttError::Resource(_)) => {
                make_room(conn, state, stall).await?;
            }
            Err(_) => return Err(Down::Mqtt),
        }
    }
}

async fn publish<
    IO: Io,
    M: RawMutex,
    const SHADOWS: usize,
    const IN_FLIGHT: usize,
    const QUEUE: usize,
    const INBOX: usize,
>(
    conn: &mut Connection<'_, '_, IO>,
    state: &State<'_, M, SHADOWS, IN_FLIGHT, QUEUE, INBOX>,
    topic: &str,
    payload: &[u8],
    q: minimq::QoS,
    stall: Duration,
) -> Result<(), Down> {
    loop {
        match conn.publish(Publication::new(topic, payload).qos(q)).await {
            Ok(_) => return Ok(()),
            Err(PubError::Session(MqttError::NotReady | MqttError::Resource(_))) => {
                make_room(conn, state, stall).await?;
            }
            Err(_) => return Err(Down::Mqtt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{attempt_after, backoff_ms};

    #[test]
    fn only_a_stable_connection_resets_the_backoff() {
        assert_eq!(attempt_after(5, Some(20_000), 20_000), 0);
        assert_eq!(attempt_after(5, Some(19_999), 20_000), 5, "closed too soon");
        assert_eq!(attempt_after(5, None, 20_000), 5, "never connected");
        assert_eq!(attempt_after(0, Some(3), 20_000), 0);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut rng = 0x1234_5678;
        let mut seen = [false; 2];
        for attempt in 0..40 {
            let cap = (500u64 << attempt.min(20)).min(30_000);
            for _ in 0..50 {
                let d = backoff_ms(500, 30_000, attempt, &mut rng);
                assert!(
                    d >= cap / 2 && d <= cap,
                    "attempt {attempt}: {d} not in [{}, {cap}]",
                    cap / 2
                );
                seen[usize::from(d > cap * 3 / 4)] = true;
            }
        }
        assert_eq!(seen, [true, true], "jitter covers both quarters");
        assert_eq!(backoff_ms(0, 0, 5, &mut rng), 1, "never zero");
    }
}
