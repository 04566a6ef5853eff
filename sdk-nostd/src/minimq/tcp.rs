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

impl core::fmt::Debug for TcpTransport<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TcpTransport").finish_non_exhaustive()
    }
}
