//! A request body that must be complete by a fixed instant.
//!
//! tower-http's `RequestBodyTimeoutLayer` restarts its timer after every piece of the body, so
//! a client sending one byte every few seconds is never cut (issue 14). This body fails once
//! its deadline passes, however the bytes trickle in; the handler's extractor then answers
//! with an error and hyper closes the connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The deadline of a request body passed.
#[derive(Debug, thiserror::Error)]
#[error("request body not complete before its deadline")]
pub struct BodyDeadlinePassed;

/// `inner`, failing with [`BodyDeadlinePassed`] once `deadline` passes.
pub struct DeadlineBody<B> {
    inner: Pin<Box<B>>,
    deadline: Pin<Box<Sleep>>,
}

impl<B> DeadlineBody<B> {
    /// Wraps `inner`; it must end before `deadline`.
    pub fn new(inner: B, deadline: Instant) -> Self {
        DeadlineBody {
            inner: Box::pin(inner),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyDeadlinePassed))));
        }
        self.inner
            .as_mut()
            .poll_frame(cx)
            .map(|frame| frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A body that never yields a frame, like a client that stopped sending.
    struct Stalled;

    impl Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    async fn next_frame<B: Body + Unpin>(body: &mut B) -> Option<Result<Frame<B::Data>, B::Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test]
    async fn a_stalled_body_fails_at_its_deadline() {
        // A short real deadline: the body never yields, so only the deadline can end the wait.
        let mut body = DeadlineBody::new(Stalled, Instant::now() + Duration::from_millis(20));
        let frame = next_frame(&mut body).await;
        let err = frame.expect("a frame").expect_err("an error");
        assert!(err.is::<BodyDeadlinePassed>(), "{err}");
    }

    #[tokio::test]
    async fn a_complete_body_passes_through() {
        let full = http_body_util_full(b"hello");
        let mut body = DeadlineBody::new(full, Instant::now() + Duration::from_secs(30));
        let frame = next_frame(&mut body).await.expect("frame").expect("data");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"hello")));
        assert!(next_frame(&mut body).await.is_none());
    }

    fn http_body_util_full(bytes: &'static [u8]) -> axum::body::Body {
        axum::body::Body::from(bytes)
    }
}
