//! [`Handler`]: what a receiver hands each message to, and [`JsonLines`], the simplest one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use super::Message;

/// Why a handler could not handle a message. The receiver logs it and counts it in
/// [`HandlerStats::failed`](super::HandlerStats::failed); it does not retry (a handler that
/// should retry, as [`HttpForward`](super::HttpForward) does, retries inside `handle`).
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// Something a [`Receiver`](super::Receiver) dispatches messages to.
///
/// Each handler has its own bounded queue and its own task: `handle` is called for one message
/// at a time, in the order the hub delivered them, and a slow handler holds up only itself
/// until its queue is full (then the receiver waits, see [`Receiver`](super::Receiver)).
pub trait Handler: Send + Sync + 'static {
    /// A name for logs and [`HandlerStats`](super::HandlerStats).
    fn name(&self) -> &str;

    /// Handles one message.
    fn handle(&self, msg: Arc<Message>) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Called once when the receiver shuts down, after the handler's queue is drained: flush
    /// or close what the handler holds. The default does nothing.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`Handler`] as a trait object (its `impl Future` methods are not object safe).
pub(crate) trait DynHandler: Send + Sync {
    fn name(&self) -> &str;
    fn handle(&self, msg: Arc<Message>) -> BoxFuture<'_, Result<(), HandlerError>>;
    fn close(&self) -> BoxFuture<'_, ()>;
}

impl<H: Handler> DynHandler for H {
    fn name(&self) -> &str {
        Handler::name(self)
    }

    fn handle(&self, msg: Arc<Message>) -> BoxFuture<'_, Result<(), HandlerError>> {
        Box::pin(Handler::handle(self, msg))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(Handler::close(self))
    }
}

/// Writes each message as one line of JSON ([`Message::to_record`]) to a writer: standard
/// output ([`JsonLines::stdout`]), a file, or a pipe a test reads.
pub struct JsonLines<W> {
    out: Mutex<W>,
}

impl JsonLines<tokio::io::Stdout> {
    /// JSON lines on standard output.
    pub fn stdout() -> Self {
        JsonLines::new(tokio::io::stdout())
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> JsonLines<W> {
    /// JSON lines on `out`; each line is flushed as it is written.
    pub fn new(out: W) -> Self {
        JsonLines {
            out: Mutex::new(out),
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Handler for JsonLines<W> {
    fn name(&self) -> &str {
        "json-lines"
    }

    async fn handle(&self, msg: Arc<Message>) -> Result<(), HandlerError> {
        let mut line = serde_json::to_vec(&msg.to_record())?;
        line.push(b'\n');
        let mut out = self.out.lock().await;
        out.write_all(&line).await?;
        out.flush().await?;
        Ok(())
    }

    async fn close(&self) {
        let _ = self.out.lock().await.flush().await;
    }
}
