//! First boot over minimq: one provisioning exchange (S-10) on a connection of its own, with
//! the claim credential. Features `minimq` and `provisioning`.
//!
//! The exchange is the sans-IO [`Provisioning`]; this function only moves its bytes: connect
//! as the claim, subscribe to `accepted` and `rejected` and wait for the SUBACK, publish the
//! request at QoS 1, and read replies until one belongs to this exchange. The whole exchange is
//! bounded by the [`Provisioning`]'s deadline. The new credentials are copied into the
//! caller's `store` (the reply's buffer is minimq's, reused as soon as this returns): the
//! application keeps them (flash, a file) and runs the [`Runner`](super::Runner) as that
//! thing from then on.

use embassy_time::with_deadline;
use minimq::{ConfigBuilder, Publication, QoS, Session, SubscriptionOptions, TopicFilter};

use super::{Buffers, Transport};
use crate::fmt::{info, warning};
use crate::provision::{ProvisionReply, Provisioning};

/// Why provisioning over minimq did not give credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProvisionFailure {
    /// The enrollment id or serial is not valid (S-10.1): nothing was sent.
    InvalidClaim,
    /// The transport could not connect.
    Transport,
    /// The MQTT handshake failed or the hub refused the claim (a wrong claim secret).
    Handshake,
    /// The connection failed before a reply arrived.
    Connection,
    /// The hub answered `rejected` with this S-10.5 code (400, 403, 409, 429, 503).
    Rejected {
        /// The code.
        code: u16,
    },
    /// No reply before the exchange's deadline.
    TimedOut,
    /// `out` cannot hold the names and the request, `store` the credentials, or minimq
    /// refused the settings (a claim too long for its buffers).
    BufferTooSmall,
}

/// The thing's credentials, copied into the caller's `store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'c> {
    /// The thing id to connect as.
    pub thing_id: &'c str,
    /// The thing's secret.
    pub password: &'c str,
}

/// Runs `exchange` over a new connection from `transport`, authenticated with `claim_secret`,
/// asking for `thing_id` when given. `buffers.rx`/`tx` are minimq's (the reply must fit `rx`:
/// a few hundred bytes with the hub's settings); `buffers.out` holds the claim's names and
/// the request. On success the credentials are in `store`.
pub async fn provision<'c, T: Transport>(
    transport: &mut T,
    buffers: Buffers<'_>,
    exchange: &Provisioning<'_>,
    claim_secret: &[u8],
    thing_id: Option<&str>,
    store: &'c mut [u8],
) -> Result<Credentials<'c>, ProvisionFailure> {
    let deadline = embassy_time::Instant::from_millis(exchange.deadline().as_millis());
    let outcome = with_deadline(
        deadline,
        exchange_once(transport, buffers, exchange, claim_secret, thing_id, store),
    )
    .await;
    match outcome {
        Ok(result) => result,
        Err(_) => {
            warning!("provisioning: no reply before the deadline");
            Err(ProvisionFailure::TimedOut)
        }
    }
}

async fn exchange_once<'c, T: Transport>(
    transport: &mut T,
    buffers: Buffers<'_>,
    exchange: &Provisioning<'_>,
    claim_secret: &[u8],
    thing_id: Option<&str>,
    store: &'c mut [u8],
) -> Result<Credentials<'c>, ProvisionFailure> {
    let Buffers { rx, tx, out } = buffers;
    let too_small = |_| ProvisionFailure::BufferTooSmall;
    // The claim's names and the request, one after the other in `out`.
    let share = out_share(out.len());
    let (user_buf, rest) = split(out, share)?;
    let (accepted_buf, rest) = split(rest, share)?;
    let (rejected_buf, rest) = split(rest, share)?;
    let (topic_buf, body_buf) = split(rest, share)?;
    let username = exchange.username(user_buf).map_err(too_small)?;
    let accepted = exchange.accepted_topic(accepted_buf).map_err(too_small)?;
    let rejected = exchange.rejected_topic(rejected_buf).map_err(too_small)?;
    let (topic, body) = exchange
        .request(thing_id, topic_buf, body_buf)
        .map_err(too_small)?;

    let config = ConfigBuilder::new(minimq::Buffers::new(rx, tx))
        .client_id(username)
        .and_then(|c| c.auth(username, claim_secret))
        .map_err(|_| ProvisionFailure::BufferTooSmall)?;
    let mut session = Session::new(config);
    let io = transport
        .connect()
        .await
        .map_err(|_| ProvisionFailure::Transport)?;
    let mut conn = session
        .connect(io)
        .await
        .map_err(|_| ProvisionFailure::Handshake)?;

    let options = SubscriptionOptions::default().maximum_qos(QoS::AtLeastOnce);
    let filters = [
        TopicFilter::new(accepted).options(options),
        TopicFilter::new(rejected).options(options),
    ];
    let op = conn
        .subscribe(&filters, &[])
        .await
        .map_err(|_| ProvisionFailure::Connection)?;
    // The request goes out only once both subscriptions are in place, or the reply could
    // arrive before them and be lost.
    while !conn.is_complete(&op) {
        if conn.is_invalidated(&op) {
            return Err(ProvisionFailure::Connection);
        }
        conn.poll()
            .await
            .map_err(|_| ProvisionFailure::Connection)?;
    }
    conn.publish(Publication::new(topic, body).qos(QoS::AtLeastOnce))
        .await
        .map_err(|_| ProvisionFailure::Connection)?;

    loop {
        let message = conn
            .poll()
            .await
            .map_err(|_| ProvisionFailure::Connection)?;
        let Some(message) = message else { continue };
        match exchange.handle(message.topic(), message.payload()) {
            Some(ProvisionReply::Accepted { thing_id, password }) => {
                info!("provisioned as {}", thing_id);
                return keep(store, thing_id, password);
            }
            Some(ProvisionReply::Rejected { code, message }) => {
                warning!("provisioning rejected: {} {}", code, message);
                return Err(ProvisionFailure::Rejected { code });
            }
            // Not this exchange's reply (another token); the core never answers TimedOut here.
            Some(ProvisionReply::TimedOut) | None => {}
        }
    }
}

/// The size of each of the four name buffers: a fifth of `out`, at most the longest topic;
/// the request body gets the rest.
fn out_share(len: usize) -> usize {
    (len / 5).min(crate::spec::limits::MAX_TOPIC_LEN)
}

fn split(buf: &mut [u8], at: usize) -> Result<(&mut [u8], &mut [u8]), ProvisionFailure> {
    if at > buf.len() {
        return Err(ProvisionFailure::BufferTooSmall);
    }
    Ok(buf.split_at_mut(at))
}

/// Copies the credentials into `store`: the thing id, then the secret.
fn keep<'c>(
    store: &'c mut [u8],
    thing_id: &str,
    password: &str,
) -> Result<Credentials<'c>, ProvisionFailure> {
    let (id_buf, rest) = split(store, thing_id.len())?;
    let (pw_buf, _) = split(rest, password.len())?;
    id_buf.copy_from_slice(thing_id.as_bytes());
    pw_buf.copy_from_slice(password.as_bytes());
    let text = |b: &'c [u8]| core::str::from_utf8(b).map_err(|_| ProvisionFailure::BufferTooSmall);
    Ok(Credentials {
        thing_id: text(id_buf)?,
        password: text(pw_buf)?,
    })
}

#[cfg(test)]
mod tests {
    use super::{ProvisionFailure, keep, out_share};

    #[test]
    fn credentials_are_copied_or_refused_when_they_do_not_fit() {
        let mut store = [0u8; 16];
        let c = keep(&mut store, "d-1", "secret").unwrap();
        assert_eq!((c.thing_id, c.password), ("d-1", "secret"));
        let mut small = [0u8; 8];
        assert_eq!(
            keep(&mut small, "d-1", "secret"),
            Err(ProvisionFailure::BufferTooSmall)
        );
    }

    #[test]
    fn names_take_a_fifth_of_out_at_most_a_topic() {
        assert_eq!(out_share(500), 100);
        assert_eq!(
            out_share(100_000),
            crate::spec::limits::MAX_TOPIC_LEN,
            "the rest is the body's"
        );
    }
}
