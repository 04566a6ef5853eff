//! The transmit queue: messages serialized back to back into the caller's transmit buffer and
//! handed out in order by `poll_transmit`.

use iothub_spec::topic::{Topic, TopicError};

use super::{Connection, Device, Queued, ReqState};
use crate::json::writer::JsonWriter;
use crate::time::Instant;
use crate::types::{Error, QoS, Transmit};

/// Moves `tx[from..used]` to the front of `tx` (the messages behind the one just sent).
///
/// A forward byte loop instead of `copy_within`, which links `memmove` (1.6 KB on thumbv7em);
/// copying forward is correct for this overlap because the destination lies below the source.
/// Out of range arguments move nothing.
fn shift_down(tx: &mut [u8], from: usize, used: usize) {
    if from > used {
        return;
    }
    let mut src = from;
    let mut dst = 0;
    while src < used {
        let Some(&b) = tx.get(src) else {
            return;
        };
        if let Some(d) = tx.get_mut(dst) {
            *d = b;
        }
        src += 1;
        dst += 1;
    }
}

/// [`Device::enqueue`] on the two fields it changes, so that a caller can keep other fields of
/// the device borrowed while the body is written (the OTA task's ids, without copying them out
/// of the session and back).
pub(super) fn enqueue_in<const SHADOWS: usize, const QUEUE: usize>(
    tx: &mut [u8],
    conn: &mut Connection<SHADOWS, QUEUE>,
    max_payload: usize,
    topic: Topic<'_>,
    qos: QoS,
    request: Option<u32>,
    body: &dyn Fn(&mut JsonWriter<'_>),
) -> Result<(), Error> {
    if conn.queue.is_full() {
        return Err(Error::QueueFull);
    }
    let start = conn.tx_len;
    let free = tx.get_mut(start..).ok_or(Error::QueueFull)?;
    let (topic_len, rest) = match topic.write_to_split(free) {
        Ok((t, rest)) => (t.len(), rest),
        Err(TopicError::BufferTooSmall) => return Err(Error::QueueFull),
        Err(_) => return Err(Error::InvalidArgument),
    };
    let mut w = JsonWriter::new(rest);
    body(&mut w);
    let payload_len = match w.finish() {
        Some(n) => n,
        // Too big for the free space: full if it would fit an empty buffer, else too large.
        None if start > 0 => return Err(Error::QueueFull),
        None => return Err(Error::PayloadTooLarge),
    };
    if payload_len > max_payload {
        return Err(Error::PayloadTooLarge);
    }
    let item = Queued {
        topic_len,
        payload_len,
        qos,
        request,
    };
    conn.queue.push_back(item).map_err(|_| Error::QueueFull)?;
    conn.tx_len = start.saturating_add(topic_len).saturating_add(payload_len);
    Ok(())
}

impl<'a, const SHADOWS: usize, const IN_FLIGHT: usize, const QUEUE: usize>
    Device<'a, SHADOWS, IN_FLIGHT, QUEUE>
{
    pub(super) fn drop_last_queued(&mut self) {
        if let Some(q) = self.conn.queue.pop_back() {
            let len = q.topic_len.saturating_add(q.payload_len);
            self.conn.tx_len = self.conn.tx_len.saturating_sub(len);
        }
    }

    /// Serializes a message at the end of the transmit queue.
    pub(super) fn enqueue(
        &mut self,
        topic: Topic<'_>,
        qos: QoS,
        request: Option<u32>,
        body: &dyn Fn(&mut JsonWriter<'_>),
    ) -> Result<(), Error> {
        let max_payload = self.config.limits.max_request_payload;
        enqueue_in(
            self.tx,
            &mut self.conn,
            max_payload,
            topic,
            qos,
            request,
            body,
        )
    }

    pub(super) fn pop_queued<'b>(
        &mut self,
        now: Instant,
        buf: &'b mut [u8],
    ) -> Result<Option<Transmit<'b>>, Error> {
        let Some(item) = self.conn.queue.front().copied() else {
            return Ok(None);
        };
        let total = item.topic_len.saturating_add(item.payload_len);
        let src = self.tx.get(..total).ok_or(Error::BufferTooSmall)?;
        let dst = buf.get_mut(..total).ok_or(Error::BufferTooSmall)?;
        // Equal lengths; a zip has no length-mismatch panic path.
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s);
        let (tb, pb) = dst
            .split_at_mut_checked(item.topic_len)
            .ok_or(Error::BufferTooSmall)?;
        let tb: &'b [u8] = tb;
        let pb: &'b [u8] = pb;
        let topic = core::str::from_utf8(tb).map_err(|_| Error::BufferTooSmall)?;
        self.conn.queue.pop_front();
        let used = self.conn.tx_len;
        shift_down(self.tx, total, used);
        self.conn.tx_len = used.saturating_sub(total);
        if let Some(id) = item.request
            && let Some(r) = self.requests.iter_mut().find(|r| r.id == id)
            && matches!(r.state, ReqState::Queued)
        {
            r.state = ReqState::Sent {
                deadline: now.add_millis(self.config.request_timeout_ms),
            };
        }
        Ok(Some(Transmit::Publish {
            topic,
            payload: pb,
            qos: item.qos,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::shift_down;
    use proptest::prelude::*;

    proptest! {
        /// The same bytes as the `copy_within` it replaced for every range the queue can pass
        /// (`from <= used <= tx.len()`); any other range does not panic.
        #[test]
        fn shift_down_is_copy_within(
            tx in prop::collection::vec(any::<u8>(), 0..64),
            from in 0usize..80,
            used in 0usize..80,
        ) {
            let mut ours = tx.clone();
            shift_down(&mut ours, from, used);
            if from <= used && used <= tx.len() {
                let mut old = tx.clone();
                old.copy_within(from..used, 0);
                prop_assert_eq!(ours, old);
            } else if from > used {
                prop_assert_eq!(ours, tx);
            }
        }
    }
}
