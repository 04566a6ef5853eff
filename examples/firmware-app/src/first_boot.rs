//! First boot: a device that left the factory with only a claim credential (an enrollment,
//! its serial number and the claim secret) provisions itself (S-10) and gets its thing id and
//! secret. The application keeps them ([`CREDENTIALS`] bytes: flash on the board, a file in
//! `firmware_host`) and runs as that thing from then on; it provisions again only when they
//! are lost.
//!
//! Transient failures (no connection, no reply, the hub busy: 429, 503) are retried with
//! exponential backoff and jitter; a refusal that will not change (400, 403, 409, a wrong
//! claim secret) is returned at once.

use embassy_time::{Duration, Timer};
use iothub_sdk_nostd::Instant;
use iothub_sdk_nostd::minimq::provision::{Credentials, ProvisionFailure, provision};
use iothub_sdk_nostd::minimq::{Buffers, Transport};
use iothub_sdk_nostd::provision::Provisioning;

/// Bytes kept for the credentials: a thing id (at most 128 bytes) and a secret (the hub's are
/// 32 characters; at most 256 are accepted).
pub const CREDENTIALS: usize = 384;
/// minimq's buffers for the claim connection: the reply is a few hundred bytes (thing id,
/// secret, settings).
pub const CLAIM_RX: usize = 2048;
/// minimq's transmit buffer for the claim connection (CONNECT, SUBSCRIBE, the request).
pub const CLAIM_TX: usize = 1024;
/// Scratch for the claim's names and the request.
pub const CLAIM_OUT: usize = 1024;
/// How long one exchange may take.
pub const EXCHANGE_TIMEOUT_MS: u64 = 10_000;
/// Exchanges tried before giving up on transient failures.
pub const ATTEMPTS: u32 = 8;

/// The factory-installed claim.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The enrollment id.
    pub enrollment: &'a str,
    /// The device's serial number (S-10.1 characters).
    pub serial: &'a str,
    /// The claim secret.
    pub secret: &'a [u8],
}

/// Provisions with `claim` through `transport`, retrying transient failures; the credentials
/// are in `store`. `seed` varies the jitter and the request's clientToken between devices.
pub async fn first_boot<'c, T: Transport>(
    transport: &mut T,
    claim: Claim<'_>,
    seed: u32,
    store: &'c mut [u8; CREDENTIALS],
) -> Result<Credentials<'c>, ProvisionFailure> {
    let mut rx = [0u8; CLAIM_RX];
    let mut tx = [0u8; CLAIM_TX];
    let mut out = [0u8; CLAIM_OUT];
    let mut rng = seed | 1;
    let mut token_buf = [0u8; 10];
    let token = hex_token(seed, &mut token_buf);
    let mut attempt = 0;
    let lengths = loop {
        let now = Instant::from_millis(embassy_time::Instant::now().as_millis());
        let exchange = Provisioning::new(
            claim.enrollment,
            claim.serial,
            token,
            now,
            EXCHANGE_TIMEOUT_MS,
        )
        .map_err(|_| ProvisionFailure::InvalidClaim)?;
        let buffers = Buffers {
            rx: &mut rx,
            tx: &mut tx,
            out: &mut out,
        };
        let sent = provision(
            transport,
            buffers,
            &exchange,
            claim.secret,
            None,
            &mut *store,
        );
        let failure = match sent.await {
            Ok(c) => break (c.thing_id.len(), c.password.len()),
            Err(failure) => failure,
        };
        attempt += 1;
        if !transient(failure) || attempt >= ATTEMPTS {
            return Err(failure);
        }
        Timer::after(Duration::from_millis(backoff_ms(attempt, &mut rng))).await;
    };
    // `provision` copied the id and then the secret into `store`; returning its borrow from
    // inside the loop is beyond today's borrow checker, so they are read back by length.
    let (id, rest) = store.split_at(lengths.0);
    let text = |b| core::str::from_utf8(b).map_err(|_| ProvisionFailure::BufferTooSmall);
    Ok(Credentials {
        thing_id: text(id)?,
        password: text(rest.get(..lengths.1).unwrap_or_default())?,
    })
}

/// Whether trying again later may succeed.
fn transient(failure: ProvisionFailure) -> bool {
    match failure {
        ProvisionFailure::Rejected { code } => code == 429 || code == 503,
        ProvisionFailure::Handshake
        | ProvisionFailure::BufferTooSmall
        | ProvisionFailure::InvalidClaim => false,
        _ => true,
    }
}

/// 500 ms doubled per attempt up to 30 s, drawn from its upper half (jitter, xorshift32).
fn backoff_ms(attempt: u32, rng: &mut u32) -> u64 {
    let cap = 500u64.saturating_mul(1 << attempt.min(6)).min(30_000);
    let mut x = *rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *rng = x;
    cap / 2 + u64::from(x) % (cap / 2 + 1)
}

/// `seed` as 8 hex digits, the request's clientToken.
fn hex_token(seed: u32, buf: &mut [u8; 10]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf[..2].copy_from_slice(b"fb");
    for (i, b) in buf[2..].iter_mut().enumerate() {
        *b = HEX[((seed >> (28 - 4 * i)) & 0xf) as usize];
    }
    core::str::from_utf8(buf).unwrap_or("fb")
}
