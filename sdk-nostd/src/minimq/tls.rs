//! [`TlsTransport`]: TLS 1.3 over a reconnectable byte stream (feature `tls`), with
//! [`embedded_tls`]; the decisions behind it are D-90 and D-91 of `docs/spec.md`.
//!
//! - Cipher suite `TLS_AES_128_GCM_SHA256`, key exchange `secp256r1` (what `embedded-tls`
//!   implements without a heap; the reference hub's rustls offers both).
//! - The server's certificate is verified against the CA certificate the caller passes
//!   (`embedded-tls`' `rustpki` verifier, ECDSA P-256): the chain the server sends must end in
//!   a certificate that the CA signed, the leaf's signature over the handshake is checked, and
//!   the leaf must name the server name (a DNS name: subject alternative name or common name;
//!   IP address names are not matched). Validity dates are **not** checked: a device has no
//!   trustworthy clock before its first connection (its NTP goes over this connection).
//! - With a [`ClientIdentity`] (an X.509 certificate and its ECDSA P-256 key) the device
//!   answers the hub's certificate request: on a hub started with `--tls-client-ca` that is
//!   required (D-71), and a certificate registered on the thing authenticates it without its
//!   secret (D-82). Without one it sends an empty certificate message, which a hub that
//!   requires certificates refuses.
//! - The RNG (ECDHE key, client random) is the caller's, a `rand_core` 0.6
//!   `CryptoRng`: seed it from the hardware's true RNG.
//!
//! ## Cancel safety
//!
//! The runner and minimq drop reads and writes half-way (`select` against timers and wakes).
//! `embedded-tls` is not cancel-safe by itself: a record header it has read lives in a local
//! variable, and a record it has encrypted is written out by an `await` that may be dropped
//! half-way. So the transport puts two stashes between TLS and the socket: TLS only reads
//! from the receive stash, which is filled with one **whole** record (cancel-safe: the
//! progress is in the stash) before TLS sees its first byte; and TLS writes encrypted records
//! into the send stash without waiting (it is drained before every write and flush, and is at
//! least as large as one record), from where they go to the socket. TLS therefore only ever
//! waits at a record boundary, where dropping the wait loses nothing.
//!
//! ## Memory
//!
//! Nothing is allocated; [`TlsBuffers`] (or [`TlsResources`]) holds four byte buffers:
//! - `read_record` and `rx_stash`: each at least one whole record the server sends, 5-byte
//!   header included. A TLS 1.3 server may send records of up to 16,384 bytes of plaintext
//!   (16,645 bytes on the wire): [`READ_RECORD_MAX`]. The reference hub caps its MQTT TLS
//!   records at 4,096 bytes before encryption, header included (D-91), so against it
//!   [`READ_RECORD_HUB`] (4,113) is enough. A larger record fails the connection.
//! - `write_record` and `tx_stash`: the device's records; longer writes are split into
//!   several records, so any size from [`WRITE_RECORD_MIN`] up works (`embedded-tls` reserves
//!   128 bytes of each for the record overhead); `tx_stash` must be at least as large as
//!   `write_record`. The handshake (ClientHello, the client certificate and its signature) is
//!   encoded in the larger of `read_record` and `write_record`.
//!
//! Besides, the handshake's future holds the key schedule and the server's certificate message
//! ([`SERVER_CERT_MAX`] bytes), and the open connection its keys.

use core::cell::RefCell;

use embedded_io_async::{Error as _, ErrorKind, ErrorType, Read, Write};
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CryptoProvider, CryptoRngCore, FlushPolicy, NoClock,
    SignatureScheme, TlsConnection, TlsContext, TlsVerifier,
};
use rand_core::{CryptoRng, RngCore};

pub use embedded_tls::TlsError;

use super::Transport;

/// `read_record` and `rx_stash` size for any TLS 1.3 server: 16,384 bytes of plaintext, 256
/// of expansion, 5 of header.
pub const READ_RECORD_MAX: usize = 16_384 + 256 + 5;

/// `read_record` and `rx_stash` size for the reference hub, which sends records of at most
/// 4,096 bytes before encryption, header included (D-91): plus the content type and the
/// 16-byte AEAD tag.
pub const READ_RECORD_HUB: usize = 4_096 + 1 + 16;

/// The largest certificate message (the server's chain) the verifier keeps for the
/// signature check; a larger one fails the handshake with `OutOfMemory`.
pub const SERVER_CERT_MAX: usize = 2_048;

/// Smallest `write_record`: the 128 bytes of record overhead `embedded-tls` reserves, and
/// room for data.
pub const WRITE_RECORD_MIN: usize = 256;

/// The cipher suite: the one every TLS 1.3 server must offer (RFC 8446, 9.1).
type Suite = Aes128GcmSha256;

/// A TLS record header: content type, version, length.
const HEADER: usize = 5;

/// A byte stream that can be opened again in place, for [`TlsTransport`] to run TLS over: an
/// `embassy-net` socket (`TcpTransport`, feature `embassy-net`), or a host socket in tests.
#[allow(async_fn_in_trait)] // embassy style: no Send bound wanted on single-core executors
pub trait Reconnect: Read + Write {
    /// Why a connection could not be opened.
    type ConnectError;

    /// Closes whatever connection is open and opens a new one to the server.
    async fn reconnect(&mut self) -> Result<(), Self::ConnectError>;
}

/// The four buffers of the transport, borrowed for its lifetime. See the module's memory
/// notes for their sizes.
#[derive(Debug)]
pub struct TlsBuffers<'b> {
    /// Where `embedded-tls` decrypts one received record (and encodes the handshake).
    pub read_record: &'b mut [u8],
    /// Where one outgoing record is assembled and encrypted.
    pub write_record: &'b mut [u8],
    /// One whole received record, filled before TLS reads it.
    pub rx_stash: &'b mut [u8],
    /// Encrypted records on their way to the socket; at least `write_record`'s size.
    pub tx_stash: &'b mut [u8],
}

/// The four buffers as arrays: `R` bytes each for the two receive buffers, `W` each for the
/// two send buffers. `TlsResources<READ_RECORD_HUB, 1024>` suits the reference hub.
#[derive(Debug)]
pub struct TlsResources<const R: usize, const W: usize> {
    read_record: [u8; R],
    rx_stash: [u8; R],
    write_record: [u8; W],
    tx_stash: [u8; W],
}

impl<const R: usize, const W: usize> TlsResources<R, W> {
    /// Zeroed buffers (a `const fn`, so it can initialise a `static`).
    pub const fn new() -> Self {
        TlsResources {
            read_record: [0; R],
            rx_stash: [0; R],
            write_record: [0; W],
            tx_stash: [0; W],
        }
    }

    /// Lends the arrays as [`TlsBuffers`].
    pub fn buffers(&mut self) -> TlsBuffers<'_> {
        TlsBuffers {
            read_record: &mut self.read_record,
            write_record: &mut self.write_record,
            rx_stash: &mut self.rx_stash,
            tx_stash: &mut self.tx_stash,
        }
    }
}

impl<const R: usize, const W: usize> Default for TlsResources<R, W> {
    fn default() -> Self {
        Self::new()
    }
}

/// The device's X.509 identity: its certificate (DER) and the certificate's ECDSA P-256
/// private key.
pub struct ClientIdentity<'c> {
    cert_der: &'c [u8],
    key: p256::SecretKey,
}

impl<'c> ClientIdentity<'c> {
    /// `cert_der`: the certificate, DER; `key`: the private key's 32-byte big-endian scalar.
    /// `Err` when `key` is not a valid P-256 scalar (the certificate is not parsed here: the
    /// hub judges it).
    pub fn new(cert_der: &'c [u8], key: &[u8; 32]) -> Result<Self, TlsSetupError> {
        let key = p256::SecretKey::from_slice(key).map_err(|_| TlsSetupError::ClientKey)?;
        Ok(ClientIdentity { cert_der, key })
    }
}

impl core::fmt::Debug for ClientIdentity<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_der_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

/// Whom to trust and who the device is.
#[derive(Debug)]
pub struct TlsConfig<'c> {
    /// The server's DNS name: sent as SNI and matched against its certificate.
    pub server_name: &'c str,
    /// The CA certificate (DER) that signed the server's certificate.
    pub ca_der: &'c [u8],
    /// The device's certificate and key, if it has them.
    pub client: Option<ClientIdentity<'c>>,
}

/// Why [`TlsTransport::new`] or [`ClientIdentity::new`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlsSetupError {
    /// `write_record` is smaller than [`WRITE_RECORD_MIN`].
    WriteRecordTooSmall,
    /// `tx_stash` is smaller than `write_record`.
    TxStashTooSmall,
    /// `read_record` or `rx_stash` is smaller than 64 bytes.
    ReadTooSmall,
    /// The server name is empty or longer than 64 bytes (the verifier's limit).
    ServerName,
    /// The client key is not a P-256 scalar.
    ClientKey,
}

impl core::fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            TlsSetupError::WriteRecordTooSmall => "write_record is below WRITE_RECORD_MIN",
            TlsSetupError::TxStashTooSmall => "tx_stash is smaller than write_record",
            TlsSetupError::ReadTooSmall => "read_record or rx_stash is too small",
            TlsSetupError::ServerName => "the server name is empty or over 64 bytes",
            TlsSetupError::ClientKey => "the client key is not a P-256 scalar",
        })
    }
}

/// Why a TLS connection could not be opened.
#[derive(Debug)]
pub enum TlsConnectError<E> {
    /// The underlying stream did not connect.
    Connect(E),
    /// The TLS handshake failed: the server's certificate was not trusted
    /// (`InvalidCertificate`, `InvalidSignature`, `DecodeError`), the server refused
    /// (`HandshakeAborted` with its alert), a record did not fit (`InsufficientSpace`,
    /// `Io(OutOfMemory)`), or the stream broke (`Io`).
    Handshake(TlsError),
}

/// [`Transport`] that runs TLS 1.3 over a [`Reconnect`] stream: reconnects the stream and
/// performs a fresh handshake for every connection the runner asks for. See the module docs.
pub struct TlsTransport<'b, 'c, S: Reconnect, Rng> {
    shared: RefCell<Stashes<'b, S>>,
    read_record: &'b mut [u8],
    write_record: &'b mut [u8],
    config: TlsConfig<'c>,
    rng: Rng,
}

impl<'b, 'c, S: Reconnect, Rng: CryptoRng + RngCore> TlsTransport<'b, 'c, S, Rng> {
    /// TLS over `socket` with the caller's buffers, trust and identity, and RNG.
    pub fn new(
        socket: S,
        buffers: TlsBuffers<'b>,
        config: TlsConfig<'c>,
        rng: Rng,
    ) -> Result<Self, TlsSetupError> {
        let TlsBuffers {
            read_record,
            write_record,
            rx_stash,
            tx_stash,
        } = buffers;
        if write_record.len() < WRITE_RECORD_MIN {
            return Err(TlsSetupError::WriteRecordTooSmall);
        }
        if tx_stash.len() < write_record.len() {
            return Err(TlsSetupError::TxStashTooSmall);
        }
        if read_record.len() < 64 || rx_stash.len() < 64 {
            return Err(TlsSetupError::ReadTooSmall);
        }
        if config.server_name.is_empty() || config.server_name.len() > 64 {
            return Err(TlsSetupError::ServerName);
        }
        Ok(TlsTransport {
            shared: RefCell::new(Stashes {
                socket,
                rx: rx_stash,
                rx_len: 0,
                rx_pos: 0,
                tx: tx_stash,
                tx_start: 0,
                tx_end: 0,
            }),
            read_record,
            write_record,
            config,
            rng,
        })
    }
}

impl<'b, 'c, S: Reconnect, Rng: CryptoRng + RngCore> Transport for TlsTransport<'b, 'c, S, Rng> {
    type Io<'t>
        = TlsStream<'t, 'b, S>
    where
        Self: 't;
    type Error = TlsConnectError<S::ConnectError>;

    async fn connect(&mut self) -> Result<Self::Io<'_>, Self::Error> {
        let TlsTransport {
            shared,
            read_record,
            write_record,
            config,
            rng,
        } = self;
        {
            let stashes = shared.get_mut();
            stashes.reset();
            stashes
                .socket
                .reconnect()
                .await
                .map_err(TlsConnectError::Connect)?;
        }
        let shared: &RefCell<Stashes<'b, S>> = shared;
        let mut tls = TlsConnection::new(
            Delegate(shared),
            &mut read_record[..],
            &mut write_record[..],
        );
        let tls_config = embedded_tls::TlsConfig::new().with_server_name(config.server_name);
        let provider = Provider {
            rng,
            verifier: CertVerifier::new(Certificate::X509(config.ca_der)),
            client: config.client.as_ref(),
        };
        tls.open(TlsContext::new(&tls_config, provider))
            .await
            .map_err(TlsConnectError::Handshake)?;
        // From here on TLS must never wait after encrypting a record: the stream flushes the
        // socket itself (see the module's cancel-safety notes).
        tls.set_flush_policy(FlushPolicy::Relaxed);
        Ok(TlsStream { tls, shared })
    }
}

impl<S: Reconnect, Rng> core::fmt::Debug for TlsTransport<'_, '_, S, Rng> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("server_name", &self.config.server_name)
            .field("client_identity", &self.config.client.is_some())
            .finish_non_exhaustive()
    }
}

/// One open TLS connection (the runner's `Io`): reads and writes application data.
pub struct TlsStream<'t, 'b, S: Reconnect> {
    tls: TlsConnection<'t, Delegate<'t, 'b, S>, Suite>,
    shared: &'t RefCell<Stashes<'b, S>>,
}

// The stashes are borrowed across awaits on purpose, here and in `Delegate`: the stream and
// TLS take turns (one `&mut TlsStream` operation at a time, and TLS calls the delegate only
// from within one), so two borrows never overlap, and a dropped operation drops its borrow.
#[allow(clippy::await_holding_refcell_ref)]
impl<S: Reconnect> TlsStream<'_, '_, S> {
    /// Sends what the send stash holds. Cancel-safe.
    async fn drain(&mut self) -> Result<(), TlsError> {
        let mut stashes = self.shared.borrow_mut();
        stashes.drain().await.map_err(TlsError::Io)
    }

    /// Flushes the socket.
    async fn flush_socket(&mut self) -> Result<(), TlsError> {
        let mut stashes = self.shared.borrow_mut();
        stashes
            .socket
            .flush()
            .await
            .map_err(|e| TlsError::Io(e.kind()))
    }
}

impl<S: Reconnect> core::fmt::Debug for TlsStream<'_, '_, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TlsStream").finish_non_exhaustive()
    }
}

impl<S: Reconnect> ErrorType for TlsStream<'_, '_, S> {
    type Error = TlsError;
}

impl<S: Reconnect> Read for TlsStream<'_, '_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        // Records of an earlier, dropped flush go out first.
        self.drain().await?;
        // Waits only inside the receive stash's fill, at a record boundary.
        self.tls.read(buf).await
    }
}

impl<S: Reconnect> Write for TlsStream<'_, '_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        // With the send stash empty, a record TLS closes fits it whole and the write below
        // completes without waiting: it cannot be dropped half-way.
        self.drain().await?;
        self.tls.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), TlsError> {
        self.drain().await?;
        self.tls.flush().await?;
        self.drain().await?;
        self.flush_socket().await
    }
}

/// The socket and both stashes.
struct Stashes<'b, S> {
    socket: S,
    /// One received record: `rx_len` bytes received so far, `rx_pos` of them given to TLS.
    rx: &'b mut [u8],
    rx_len: usize,
    rx_pos: usize,
    /// Encrypted bytes `tx_start..tx_end` not yet sent.
    tx: &'b mut [u8],
    tx_start: usize,
    tx_end: usize,
}

impl<S: Reconnect> Stashes<'_, S> {
    fn reset(&mut self) {
        self.rx_len = 0;
        self.rx_pos = 0;
        self.tx_start = 0;
        self.tx_end = 0;
    }

    /// The size of the record in the receive stash, header included, once its header is in.
    fn record_len(&self) -> Option<usize> {
        match self.rx.get(3..HEADER) {
            Some(&[hi, lo]) if self.rx_len >= HEADER => {
                Some(HEADER + usize::from(u16::from_be_bytes([hi, lo])))
            }
            _ => None,
        }
    }

    /// Bytes of a whole received record not yet given to TLS; fills the stash with the next
    /// record first when there are none. Cancel-safe: the progress is in `self`.
    async fn fill(&mut self) -> Result<usize, ErrorKind> {
        if self.record_len() == Some(self.rx_len) && self.rx_pos == self.rx_len {
            // The last record was consumed whole.
            self.rx_len = 0;
            self.rx_pos = 0;
        }
        loop {
            if self.record_len() == Some(self.rx_len) {
                return Ok(self.rx_len - self.rx_pos);
            }
            let want = self.record_len().unwrap_or(HEADER);
            // A record larger than the stash: `OutOfMemory`.
            let space = self
                .rx
                .get_mut(self.rx_len..want)
                .ok_or(ErrorKind::OutOfMemory)?;
            let n = self.socket.read(space).await.map_err(|e| e.kind())?;
            if n == 0 {
                return Err(ErrorKind::ConnectionReset);
            }
            self.rx_len += n;
        }
    }

    /// Sends the send stash to the socket. Cancel-safe: the progress is in `self`.
    async fn drain(&mut self) -> Result<(), ErrorKind> {
        while self.tx_start < self.tx_end {
            let pending = self
                .tx
                .get(self.tx_start..self.tx_end)
                .ok_or(ErrorKind::Other)?;
            let n = self.socket.write(pending).await.map_err(|e| e.kind())?;
            if n == 0 {
                return Err(ErrorKind::WriteZero);
            }
            self.tx_start += n;
        }
        self.tx_start = 0;
        self.tx_end = 0;
        Ok(())
    }
}

/// What `embedded-tls` reads from and writes to: the stashes.
struct Delegate<'t, 'b, S>(&'t RefCell<Stashes<'b, S>>);

impl<S> ErrorType for Delegate<'_, '_, S> {
    type Error = ErrorKind;
}

#[allow(clippy::await_holding_refcell_ref)] // see `TlsStream`
impl<S: Reconnect> Read for Delegate<'_, '_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        let mut stashes = self.0.borrow_mut();
        let available = stashes.fill().await?;
        let n = available.min(buf.len());
        let from = stashes.rx_pos;
        let src = stashes.rx.get(from..from + n).ok_or(ErrorKind::Other)?;
        buf.get_mut(..n)
            .ok_or(ErrorKind::Other)?
            .copy_from_slice(src);
        stashes.rx_pos += n;
        Ok(n)
    }
}

#[allow(clippy::await_holding_refcell_ref)] // see `TlsStream`
impl<S: Reconnect> Write for Delegate<'_, '_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        let mut stashes = self.0.borrow_mut();
        if stashes.tx.len() - stashes.tx_end < buf.len() {
            // Only in the handshake (afterwards the stream drains first).
            stashes.drain().await?;
        }
        let start = stashes.tx_end;
        let end = start + buf.len();
        match stashes.tx.get_mut(start..end) {
            Some(dst) => {
                dst.copy_from_slice(buf);
                stashes.tx_end = end;
                Ok(buf.len())
            }
            // A handshake record larger than the stash: straight to the (drained) socket.
            None => stashes.socket.write(buf).await.map_err(|e| e.kind()),
        }
    }

    async fn flush(&mut self) -> Result<(), ErrorKind> {
        let mut stashes = self.0.borrow_mut();
        stashes.drain().await?;
        stashes.socket.flush().await.map_err(|e| e.kind())
    }
}

/// Trust, identity and randomness for one handshake.
struct Provider<'p, 'c, Rng> {
    rng: &'p mut Rng,
    verifier: CertVerifier<'c, Suite, NoClock, SERVER_CERT_MAX>,
    client: Option<&'p ClientIdentity<'c>>,
}

impl<Rng: CryptoRng + RngCore> CryptoProvider for Provider<'_, '_, Rng> {
    type CipherSuite = Suite;
    type Signature = p256::ecdsa::DerSignature;

    fn rng(&mut self) -> impl CryptoRngCore {
        &mut *self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Suite>, TlsError> {
        Ok(&mut self.verifier)
    }

    fn signer(
        &mut self,
    ) -> Result<(impl signature::SignerMut<Self::Signature>, SignatureScheme), TlsError> {
        let client = self.client.ok_or(TlsError::InvalidPrivateKey)?;
        Ok((
            p256::ecdsa::SigningKey::from(&client.key),
            SignatureScheme::EcdsaSecp256r1Sha256,
        ))
    }

    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        self.client.map(|c| Certificate::X509(c.cert_der))
    }
}
