//! The byte stream under a virtual thing's MQTT: plain TCP, or TLS over it (`--tls`).
//!
//! Plain TCP waits for readability before it reserves read-buffer space, so an idle thing holds
//! no read buffer (the simulator's memory per thing depends on it). TLS reads through rustls,
//! which keeps its own record buffers per connection whatever the simulator does; that cost is
//! part of what a TLS run measures.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use super::READ_CHUNK;

/// What the things of a TLS run connect with: the client configuration (trusting the hub's
/// CA) and the name the hub's certificate must carry.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// Shared by every thing: rustls' session cache is in it, but the simulator's things are
    /// distinct devices, so resumption is off (each connect is a full handshake).
    pub config: Arc<ClientConfig>,
    /// Checked against the hub's certificate.
    pub server_name: ServerName<'static>,
}

impl TlsClient {
    /// A client trusting exactly the certificates of `ca_pem`, checking `server_name`.
    pub fn new(ca_pem: &[u8], server_name: &str) -> anyhow::Result<TlsClient> {
        use anyhow::Context;
        use tokio_rustls::rustls::pki_types::CertificateDer;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(cert.context("CA file: bad PEM")?)
                .context("CA file: not a usable CA certificate")?;
        }
        anyhow::ensure!(!roots.is_empty(), "CA file: no certificate in it");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = tokio_rustls::rustls::client::Resumption::disabled();
        let server_name = ServerName::try_from(server_name.to_owned())
            .with_context(|| format!("{server_name:?} is not a DNS name or IP address"))?;
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// A connected stream.
pub(super) enum Link {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Link {
    /// Reads what is there into `buf`: the number of bytes, 0 at the end of the stream.
    /// Cancel safe (nothing read is lost when the future is dropped).
    pub(super) async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Link::Plain(stream) => loop {
                stream.readable().await?;
                buf.reserve(READ_CHUNK);
                match stream.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                    }
                    r => return r,
                }
            },
            Link::Tls(stream) => {
                buf.reserve(READ_CHUNK);
                stream.read_buf(buf).await
            }
        }
    }

    /// Writes all of `bytes` (and, under TLS, flushes the records out).
    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Link::Plain(stream) => stream.write_all(bytes).await,
            Link::Tls(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
        }
    }
}
