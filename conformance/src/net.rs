//! Where the suite's MQTT connections go and over what: plain TCP, or TLS (`hub --tls`).
//!
//! [`MqttTarget`] is the one place that opens a connection to the hub: [`MqttTarget::open`]
//! for the raw client ([`crate::raw`]) and [`MqttTarget::rumqttc_transport`] for rumqttc
//! ([`crate::mqtt`]). Cases only ever hand the target on, so none of them knows about TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Bound on opening one connection (TCP connect, then the TLS handshake).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream to the hub: a `TcpStream` or a TLS stream over one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What `--tls` was given.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file with the CA certificate(s) that sign the hub's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate chain, for hubs that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// The name the hub's certificate must carry, when it is not the MQTT address's host.
    pub server_name: Option<String>,
}

/// Why the TLS settings cannot be used; found before any case runs.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file could not be read.
    #[error("reading the {what} {}: {source}", path.display())]
    Read {
        /// Which file (`CA file`, `client certificate`, `client key`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate file holds no usable PEM certificate.
    #[error("the {what} {} holds no PEM certificate{detail}", path.display())]
    NoCertificate {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What the PEM parser said, if anything.
        detail: String,
    },
    /// A CA certificate is not a usable trust anchor.
    #[error("the CA file {}: certificate {index} is not a usable trust anchor: {source}", path.display())]
    BadCa {
        /// Its path.
        path: PathBuf,
        /// Which certificate in the file (from 1).
        index: usize,
        /// What webpki said.
        source: rustls::Error,
    },
    /// The key file holds no PEM private key.
    #[error("the client key {} holds no PEM private key: {detail}", path.display())]
    NoKey {
        /// Its path.
        path: PathBuf,
        /// What the PEM parser said.
        detail: String,
    },
    /// A client certificate without its key, or the other way round.
    #[error("--client-cert and --client-key go together")]
    HalfClientIdentity,
    /// rustls refused the configuration (a key that does not match the certificate, ..).
    #[error("the TLS configuration is not usable: {0}")]
    Config(rustls::Error),
    /// The server name is neither a DNS name nor an IP address.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// A TLS client configuration ready to connect (the CA and client identity are read once).
#[derive(Debug)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
    ca_file: PathBuf,
}

impl TlsClient {
    /// Reads the files of `o` and builds the configuration (ring provider, as the SDK).
    pub fn new(o: &TlsOptions) -> Result<TlsClient, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for (i, cert) in read_certs("CA file", &o.ca_file)?.into_iter().enumerate() {
            roots.add(cert).map_err(|source| TlsSetupError::BadCa {
                path: o.ca_file.clone(),
                index: i + 1,
                source,
            })?;
        }
        let roots = Arc::new(roots);
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Config)?
            .with_root_certificates(roots.clone());
        let mut config = match (&o.client_cert, &o.client_key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs("client certificate", cert)?;
                let key = read_key(key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(TlsSetupError::Config)?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(TlsSetupError::HalfClientIdentity),
        };
        let server_name = match &o.server_name {
            Some(n) => {
                let name = ServerName::try_from(n.clone())
                    .map_err(|_| TlsSetupError::ServerName(n.clone()))?;
                // rumqttc verifies against the host it connects to; a hub reached by an
                // address its certificate does not name is checked against the name given.
                let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| TlsSetupError::Config(rustls::Error::General(e.to_string())))?;
                config
                    .dangerous()
                    .set_certificate_verifier(Arc::new(NamedVerifier {
                        inner,
                        name: name.clone(),
                    }));
                Some(name)
            }
            None => None,
        };
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
            ca_file: o.ca_file.clone(),
        })
    }

    /// The CA file the hub's certificate is checked against.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read(what, path)?;
    let no_cert = |detail: String| TlsSetupError::NoCertificate {
        what,
        path: path.to_path_buf(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_cert(format!(": {e}")))?;
    if certs.is_empty() {
        return Err(no_cert(String::new()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = read("client key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsSetupError::NoKey {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Checks the hub's certificate against a fixed name instead of the address dialled.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The hub's MQTT address and how to reach it.
#[derive(Debug, Clone)]
pub struct MqttTarget {
    /// Host (name or IP address, without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    tls: Option<Arc<TlsClient>>,
}

impl MqttTarget {
    /// Plain TCP to `host:port`.
    pub fn tcp(host: impl Into<String>, port: u16) -> MqttTarget {
        MqttTarget {
            host: host.into(),
            port,
            tls: None,
        }
    }

    /// `host:port` over TLS with `tls` (plain TCP when `None`).
    pub fn new(host: impl Into<String>, port: u16, tls: Option<Arc<TlsClient>>) -> MqttTarget {
        MqttTarget {
            host: host.into(),
            port,
            tls,
        }
    }

    /// The TLS client, when connections go over TLS.
    pub fn tls(&self) -> Option<&Arc<TlsClient>> {
        self.tls.as_ref()
    }

    /// `mqtt://host:port` or `mqtts://host:port`, for reports.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// Opens a byte stream to the hub: TCP, then the TLS handshake when configured. Both are
    /// bounded by [`OPEN_TIMEOUT`].
    pub async fn open(&self) -> anyhow::Result<Box<dyn Io>> {
        let tcp = timeout(
            OPEN_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .context("TCP connect timed out")?
        .with_context(|| format!("TCP connect to {}", self.url()))?;
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name = match &tls.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(self.host.clone())
                .map_err(|_| TlsSetupError::ServerName(self.host.clone()))?,
        };
        let stream = timeout(
            OPEN_TIMEOUT,
            tokio_rustls::TlsConnector::from(tls.config.clone()).connect(name, tcp),
        )
        .await
        .context("TLS handshake timed out")?
        .with_context(|| format!("TLS handshake with {}", self.url()))?;
        Ok(Box::new(stream))
    }

    /// The transport rumqttc uses for this target.
    pub fn rumqttc_transport(&self) -> rumqttc::Transport {
        match &self.tls {
            None => rumqttc::Transport::Tcp,
            Some(tls) => rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
                tls.config.clone(),
            )),
        }
    }
}

impl From<std::net::SocketAddr> for MqttTarget {
    fn from(a: std::net::SocketAddr) -> MqttTarget {
        MqttTarget::tcp(a.ip().to_string(), a.port())
    }
}

impl From<&MqttTarget> for MqttTarget {
    fn from(t: &MqttTarget) -> MqttTarget {
        t.clone()
    }
}
