//! [`Transport`] over an `embassy-net` TCP socket (feature `embassy-net`).

use embassy_net::IpEndpoint;
use embassy_net::tcp::{ConnectError, TcpSocket};

use super::Transport;

/// Connects one `embassy-net` [`TcpSocket`] (with the caller's socket buffers) to the broker,
/// again for every reconnect: the old connection is aborted first.
pub struct TcpTransport<'s> {
    socket: TcpSocket<'s>,
    remote: IpEndpoint,
}

impl<'s> TcpTransport<'s> {
    /// Connects `socket` to `remote` (the broker's address and port) when the runner asks.
    pub fn new(socket: TcpSocket<'s>, remote: IpEndpoint) -> Self {
        TcpTransport { socket, remote }
    }
}

impl<'s> Transport for TcpTransport<'s> {
    type Io<'t>
        = &'t mut TcpSocket<'s>
    where
        Self: 't;
    type Error = ConnectError;

    async fn connect(&mut self) -> Result<Self::Io<'_>, Self::Error> {
        self.socket.abort();
        // Lets the abort (RST) go out and the socket return to closed.
        let _ = self.socket.flush().await;
        self.socket.connect(self.remote).await?;
        Ok(&mut self.socket)
    }
}

/// With feature `tls`, [`TlsTransport`](super::TlsTransport) runs TLS over the same socket:
/// the transport is also a reconnectable byte stream.
#[cfg(feature = "tls")]
impl embedded_io_async::ErrorType for TcpTransport<'_> {
    type Error = embassy_net::tcp::Error;
}

#[cfg(feature = "tls")]
impl embedded_io_async::Read for TcpTransport<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        embedded_io_async::Read::read(&mut self.socket, buf).await
    }
}

#[cfg(feature = "tls")]
impl embedded_io_async::Write for TcpTransport<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        embedded_io_async::Write::write(&mut self.socket, buf).await
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        embedded_io_async::Write::flush(&mut self.socket).await
    }
}

#[cfg(feature = "tls")]
impl super::Reconnect for TcpTransport<'_> {
    type ConnectError = ConnectError;

    async fn reconnect(&mut self) -> Result<(), ConnectError> {
        Transport::connect(self).await.map(|_| ())
    }
}

impl core::fmt::Debug for TcpTransport<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TcpTransport").finish_non_exhaustive()
    }
}
