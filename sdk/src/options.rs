//! [`ThingOptions`]: how to reach the hub and how the device behaves.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use iothub_spec::ids::is_valid_method_name;
use iothub_spec::limits::Limits;

use crate::method::{Handler, MethodRequest, MethodResult};
use crate::ota::{OtaHandler, OtaTask};

/// The MQTT protocol version (S-1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// MQTT 3.1.1 (the default).
    #[default]
    V311,
    /// MQTT 5, through `rumqttc::v5`.
    V5,
}

/// An upper bound of any MQTT packet the hub sends a thing when its whole shadow state is at
/// most `max_state_bytes` (the hub's `maxStateBytes`, `GET /api/v1/limits`). The largest is
/// `update/documents` (S-3.7: the previous and the current document), which the device
/// receives with its `update/+` subscription; then the `get/accepted` document.
///
/// Metadata replaces each leaf value by `{"timestamp":N}` (27 bytes) and a leaf takes at least
/// 5 bytes of state (`"":0` and a separator), so the metadata of a section of `x` bytes is at
/// most `x + 26 x / 5`: a section with its metadata is at most `7.2 x`. Desired and reported
/// together take at most `S` bytes and the delta at most desired again, so a document is at
/// most `7.2 * 2 S`, and two documents (previous and current, each without delta) as much. With
/// 1 KiB for the envelope, topic and MQTT header: `14.4 S + 1024`. Measured on the hub: a
/// 32 KiB desired state of 4,090 leaves gives an `update/documents` of 343,508 bytes.
pub const fn max_document_bytes(max_state_bytes: usize) -> usize {
    max_state_bytes.saturating_mul(72) / 5 + 1024
}

/// Reconnection policy: exponential backoff with jitter.
///
/// The n-th consecutive failed attempt waits `min(max, initial * 2^n)` scaled by a random
/// factor in `[1 - jitter, 1]`, so a fleet restarted together does not reconnect in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Fraction of the delay that is random, 0.0 to 1.0.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0 = the first retry), with `random` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let factor = 2f64.powi(i32::try_from(attempt.min(30)).unwrap_or(30));
        let base = (self.initial.as_secs_f64() * factor).min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64(base * (1.0 - jitter * random.clamp(0.0, 1.0)))
    }
}

/// Everything [`crate::Thing::connect`] needs. Build with [`ThingOptions::new`], then chain the
/// setters.
#[derive(Clone)]
pub struct ThingOptions {
    pub(crate) thing_id: String,
    pub(crate) secret: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) protocol: Protocol,
    pub(crate) shadows: Vec<String>,
    pub(crate) keep_alive: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) max_concurrent_methods: usize,
    pub(crate) user_topics: bool,
    pub(crate) max_message_bytes: usize,
    /// Direct-method handlers, in place before the first CONNACK.
    pub(crate) handlers: HashMap<String, Handler>,
    pub(crate) ota_handler: Option<OtaHandler>,
    /// The TLS configuration, when connecting with TLS.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The roots given to [`ThingOptions::tls_ca_pem`], for a later client certificate.
    #[cfg(feature = "tls")]
    pub(crate) tls_roots: Option<rustls::RootCertStore>,
    /// The WebSocket URL, when connecting over MQTT over WebSocket.
    #[cfg(feature = "websocket")]
    pub(crate) websocket: Option<String>,
}

impl std::fmt::Debug for ThingOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret (S-1.6).
        f.debug_struct("ThingOptions")
            .field("thing_id", &self.thing_id)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("protocol", &self.protocol)
            .field("shadows", &self.shadows)
            .field("methods", &self.handlers.keys().collect::<Vec<_>>())
            .field("ota_handler", &self.ota_handler.is_some())
            .field("tls", &self.uses_tls())
            .finish_non_exhaustive()
    }
}

impl ThingOptions {
    /// Options for `thing_id` with its `secret` (S-1.2), reaching the hub's MQTT listener at
    /// `host:port`. Defaults: MQTT 3.1.1 over TCP, the `default` shadow, keep-alive 30 s,
    /// request timeout 10 s, connect timeout 10 s, [`Backoff::default`].
    pub fn new(
        thing_id: impl Into<String>,
        secret: impl Into<String>,
        host: impl Into<String>,
        port: u16,
    ) -> Self {
        ThingOptions {
            thing_id: thing_id.into(),
            secret: secret.into(),
            host: host.into(),
            port,
            protocol: Protocol::V311,
            shadows: vec!["default".to_owned()],
            keep_alive: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            max_concurrent_methods: 32,
            user_topics: false,
            max_message_bytes: max_document_bytes(Limits::DEFAULT.max_state_bytes),
            handlers: HashMap::new(),
            ota_handler: None,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            tls_roots: None,
            #[cfg(feature = "websocket")]
            websocket: None,
        }
    }

    /// Like [`ThingOptions::new`] with the address as one `host:port` string (or a
    /// `SocketAddr`'s text).
    pub fn with_addr(
        thing_id: impl Into<String>,
        secret: impl Into<String>,
        addr: &str,
    ) -> Result<Self, crate::Error> {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or(crate::Error::InvalidArgument("address must be host:port"))?;
        let port = port
            .parse()
            .map_err(|_| crate::Error::InvalidArgument("address must be host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(ThingOptions::new(thing_id, secret, host, port))
    }

    /// The MQTT version to speak.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Shorthand for `protocol(Protocol::V5)`.
    pub fn mqtt5(self) -> Self {
        self.protocol(Protocol::V5)
    }

    /// The shadows the thing follows (S-2: `default` and named shadows, at most 16). Only these
    /// can be used with [`crate::Thing::shadow`]: the device subscribes to their replies and
    /// resynchronizes them after every connect.
    pub fn shadows<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.shadows = names.into_iter().map(Into::into).collect();
        self
    }

    /// MQTT keep-alive interval.
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// How long a shadow request or NTP sample waits for its answer.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long [`crate::Thing::connect`] keeps trying before it gives up.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The reconnection policy.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The largest MQTT packet the thing accepts (announced to the hub as the MQTT 5 Maximum
    /// Packet Size). Default: [`max_document_bytes`] of the hub's default `maxStateBytes`
    /// (32 KiB), 472,883 bytes, so no shadow message of a hub with default limits is ever too
    /// large (rumqttc allocates as messages come, not the limit up front). For a hub run with a larger `--max-state-bytes` (see
    /// `GET /api/v1/limits`), pass `max_document_bytes(that)`.
    ///
    /// A larger message is lost, never silently: [`crate::SyncedState::next`] returns
    /// [`crate::Error::TooLarge`] with its size (MQTT 3.1.1: the connection restarts, as the
    /// client cannot skip the packet), or [`crate::Error::SyncLost`] when the shadow document
    /// stays out of reach (MQTT 5: the hub discards what does not fit, D-38).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes.max(1024);
        self
    }

    /// Most method handlers running at once; further calls are answered 503 at once.
    pub fn max_concurrent_methods(mut self, n: usize) -> Self {
        self.max_concurrent_methods = n.max(1);
        self
    }

    /// Subscribe to `$iothub/user/things/{thingId}/#` after every connect, for
    /// [`crate::Thing::user_messages`] (off by default).
    pub fn user_topics(mut self, on: bool) -> Self {
        self.user_topics = on;
        self
    }

    /// Registers `handler` for the direct method `name` (S-5), replacing any previous one.
    /// Handlers are part of the options so that they are in place before the hub accepts the
    /// connection: a call that arrives right after CONNACK is answered by its handler, never
    /// with 404.
    ///
    /// Each call runs the handler in its own task: `Ok(data)` is answered 200 with `data`,
    /// `Err(MethodError)` with its code, a panicking handler with 500. Calls of methods without
    /// a handler are answered 404. At most [`ThingOptions::max_concurrent_methods`] handlers
    /// run at once; further calls get 503. The hub waits for the answer up to the caller's
    /// timeout (S-5.3). [`MethodRequest::thing`] gives the handler the connected thing.
    ///
    /// Fails with [`crate::Error::InvalidArgument`] for a name S-5.1 does not allow.
    pub fn on_method<F, Fut>(mut self, name: &str, handler: F) -> Result<Self, crate::Error>
    where
        F: Fn(MethodRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = MethodResult> + Send + 'static,
    {
        if !is_valid_method_name(name) {
            return Err(crate::Error::InvalidArgument("invalid method name"));
        }
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        self.handlers.insert(name.to_owned(), handler);
        Ok(self)
    }

    /// Runs `handler` in its own task for every OTA task the hub sends (S-7), from the first
    /// CONNACK on. The handler reports with [`OtaTask::progress`], [`OtaTask::failed`], and
    /// [`OtaTask::done`] once the image is installed. A task the hub sends again after a
    /// reconnect while the device still works on it is handed to the handler again: compare
    /// [`OtaTask::task_id`] with the one in progress. [`crate::Ota::tasks`] is the alternative
    /// for applications that want the tasks in their own loop; use one or the other.
    pub fn on_ota_task<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(OtaTask) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.ota_handler = Some(Arc::new(move |task| Box::pin(handler(task))));
        self
    }

    /// Connect with TLS (feature `tls`), trusting exactly the CA certificates in `ca_pem` (PEM
    /// text with one or more `CERTIFICATE` sections; the system roots are not used). The hub's
    /// certificate must name the host given to [`ThingOptions::new`] (a DNS name, or an IP
    /// address SAN). TCP_NODELAY stays on. Replaces any earlier TLS setting, client certificate
    /// included.
    ///
    /// Fails with [`crate::Error::Tls`] when the PEM text holds no usable certificate.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use iothub_sdk::ThingOptions;
    /// let options = ThingOptions::new("thermostat-1", "its-secret", "hub.example.com", 8883)
    ///     .tls_ca_pem(&std::fs::read("ca.pem")?)?
    ///     // Optional, for mutual TLS:
    ///     .tls_client_cert_pem(&std::fs::read("device.pem")?, &std::fs::read("device.key")?)?;
    /// # let _ = options;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_ca_pem(mut self, ca_pem: &[u8]) -> Result<Self, crate::Error> {
        let roots = crate::tls::roots(ca_pem)?;
        self.tls = Some(crate::tls::client_config(roots.clone(), None)?);
        self.tls_roots = Some(roots);
        Ok(self)
    }

    /// Also present a client certificate (mutual TLS, feature `tls`): `cert_chain_pem` holds
    /// the certificate (then any intermediates), `key_pem` its private key (PKCS#8, PKCS#1 or
    /// SEC1). Call after [`ThingOptions::tls_ca_pem`].
    ///
    /// Fails with [`crate::Error::Tls`] for PEM text without a certificate or key, a key that
    /// does not match the certificate, or when no CA was set.
    #[cfg(feature = "tls")]
    pub fn tls_client_cert_pem(
        mut self,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, crate::Error> {
        let roots = self.tls_roots.clone().ok_or(crate::tls::TlsError::NoCa)?;
        self.tls = Some(crate::tls::client_config(
            roots,
            Some((cert_chain_pem, key_pem)),
        )?);
        Ok(self)
    }

    /// Connect with TLS using a ready rustls configuration (feature `tls`), for what the PEM
    /// helpers do not cover (ALPN, custom verifiers, platform roots). Build it with
    /// [`crate::rustls`] and, to avoid depending on a process-wide default,
    /// `ClientConfig::builder_with_provider`.
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self.tls_roots = None;
        self
    }

    /// Connect over MQTT over WebSocket (feature `websocket`, S-1.1) to `url`:
    /// `ws://host[:port]/path`, or `wss://host[:port]/path` with the `tls` feature and a CA set
    /// by [`ThingOptions::tls_ca_pem`] or [`ThingOptions::tls_config`] (a client certificate
    /// works as over MQTT over TLS). The reference hub serves the path `/mqtt` (D-69). The
    /// URL's host and port replace the ones given to [`ThingOptions::new`].
    ///
    /// Fails with [`crate::Error::InvalidArgument`] for a URL that is not `ws://` or `wss://`
    /// with a host, a port that is not a number, or `wss://` without the `tls` feature.
    /// [`crate::Thing::connect`] refuses `wss://` without TLS settings and `ws://` with them.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use iothub_sdk::ThingOptions;
    /// let options = ThingOptions::new("thermostat-1", "its-secret", "hub.example.com", 0)
    ///     .websocket("ws://hub.example.com:8080/mqtt")?;
    /// # let _ = options;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "websocket")]
    pub fn websocket(mut self, url: &str) -> Result<Self, crate::Error> {
        let (host, port) = websocket_host_port(url)?;
        self.host = host;
        self.port = port;
        self.websocket = Some(url.to_owned());
        Ok(self)
    }

    /// Refuses combinations that cannot connect, before anything is started.
    pub(crate) fn check(&self) -> Result<(), crate::Error> {
        #[cfg(feature = "websocket")]
        if let Some(url) = &self.websocket {
            let secure = url.starts_with("wss://");
            if secure && !self.uses_tls() {
                return Err(crate::Error::InvalidArgument(
                    "wss:// needs tls_ca_pem or tls_config",
                ));
            }
            if !secure && self.uses_tls() {
                return Err(crate::Error::InvalidArgument(
                    "TLS settings with a ws:// URL: use wss://",
                ));
            }
        }
        Ok(())
    }

    /// Whether the connection uses TLS.
    pub fn uses_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        {
            self.tls.is_some()
        }
        #[cfg(not(feature = "tls"))]
        {
            false
        }
    }

    /// The thing id.
    pub fn thing_id(&self) -> &str {
        &self.thing_id
    }
}

/// The host and port of a `ws://` or `wss://` URL (default ports 80 and 443).
#[cfg(feature = "websocket")]
fn websocket_host_port(url: &str) -> Result<(String, u16), crate::Error> {
    const BAD: crate::Error = crate::Error::InvalidArgument(
        "websocket URL must be ws://host[:port]/path or wss://host[:port]/path",
    );
    let (rest, default_port) = if let Some(rest) = url.strip_prefix("ws://") {
        (rest, 80)
    } else if let Some(rest) = url.strip_prefix("wss://") {
        if cfg!(not(feature = "tls")) {
            return Err(crate::Error::InvalidArgument(
                "wss:// needs the tls feature",
            ));
        }
        (rest, 443)
    } else {
        return Err(BAD);
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(BAD);
    }
    // `[::1]:8080`, `host:8080`, `host`.
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse::<u16>().map_err(|_| BAD)?),
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(BAD);
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_down() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.5,
        };
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(2, 0.0), Duration::from_millis(400));
        assert_eq!(b.delay(10, 0.0), Duration::from_secs(1));
        assert_eq!(b.delay(10, 1.0), Duration::from_millis(500));
        assert!(b.delay(1, 0.3) < Duration::from_millis(200));
    }

    #[test]
    fn addr_parsing() {
        let o = ThingOptions::with_addr("t", "s", "127.0.0.1:1883").expect("addr");
        assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 1883));
        let o = ThingOptions::with_addr("t", "s", "[::1]:1").expect("addr");
        assert_eq!(o.host, "::1");
        assert!(ThingOptions::with_addr("t", "s", "nope").is_err());
    }

    #[cfg(feature = "websocket")]
    #[test]
    fn websocket_urls() {
        let hp = |url| websocket_host_port(url).map_err(|e| e.to_string());
        assert_eq!(
            hp("ws://127.0.0.1:8080/mqtt"),
            Ok(("127.0.0.1".into(), 8080))
        );
        assert_eq!(
            hp("ws://hub.example.com/mqtt"),
            Ok(("hub.example.com".into(), 80))
        );
        assert_eq!(hp("ws://[::1]:9/mqtt"), Ok(("::1".into(), 9)));
        assert_eq!(hp("ws://[::1]/mqtt"), Ok(("::1".into(), 80)));
        for bad in [
            "http://h/mqtt",
            "ws://",
            "ws://:80/mqtt",
            "ws://h:x/mqtt",
            "ws://u@h/mqtt",
            "h:80",
        ] {
            assert!(hp(bad).is_err(), "{bad}");
        }
        #[cfg(feature = "tls")]
        assert_eq!(hp("wss://h/mqtt"), Ok(("h".into(), 443)));
        #[cfg(not(feature = "tls"))]
        assert!(hp("wss://h/mqtt").is_err());

        let o = ThingOptions::new("t", "s", "x", 1)
            .websocket("ws://127.0.0.1:8080/mqtt")
            .expect("url");
        assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", 8080));
        assert!(o.check().is_ok());
    }
}
