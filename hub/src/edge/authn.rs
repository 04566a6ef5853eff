//! CONNECT authentication (S-1.2, S-1.3, S-1.5): things against the registry, service users
//! against the configured list.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iothub_spec::ids::CLAIM_USER_PREFIX;
use tokio::sync::Semaphore;

use crate::auth::{CredentialCache, constant_time_eq, verify_password};
use crate::guard::backoff::{BackoffConfig, FailureBackoff};
use crate::store::SharedStore;

/// The outcome of checking a thing's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialCheck {
    /// Known, enabled, right secret.
    Valid,
    /// Unknown thing or wrong secret (CONNACK 4 / 0x86).
    Invalid,
    /// Known and right secret, but disabled (CONNACK 5 / 0x87).
    Disabled,
    /// The registry could not be read; refuse rather than guess.
    Unavailable,
    /// Too many password verifications wait already; refused without checking (the client
    /// tries again later).
    Busy,
}

/// Verifications that may wait for a slot, per slot. A wrong-password flood is refused the
/// moment more wait: otherwise its CONNECTs queue for the slow hash while each holds an
/// unauthenticated connection slot, until the cap on those refuses everyone at accept,
/// legitimate devices included (issue 14, an attack from many addresses). A secret verified
/// before is cached and never waits here.
const VERIFY_QUEUE_PER_SLOT: usize = 4;

/// Checks credentials presented in CONNECT.
#[derive(Clone)]
pub struct Authenticator {
    store: SharedStore,
    cache: Arc<CredentialCache>,
    service_users: Arc<HashMap<String, String>>,
    /// Password hashes verified at once. Each argon2 verification holds its memory cost (MiBs)
    /// on a blocking thread; unbounded, a connect storm would start hundreds of them.
    verify_slots: Arc<Semaphore>,
    /// Verifications running or waiting for a slot ([`VERIFY_QUEUE_PER_SLOT`]).
    verify_queue: Arc<Semaphore>,
    /// Delays before refusing failed CONNECTs, per address and per thing.
    backoff: Arc<FailureBackoff>,
}

impl Authenticator {
    /// `service_users` maps `$name` to its secret (from the hub's configuration).
    pub fn new(
        store: SharedStore,
        cache: Arc<CredentialCache>,
        service_users: HashMap<String, String>,
    ) -> Self {
        let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get());
        Authenticator {
            store,
            cache,
            service_users: Arc::new(service_users),
            verify_slots: Arc::new(Semaphore::new(parallelism)),
            verify_queue: Arc::new(Semaphore::new(parallelism * (1 + VERIFY_QUEUE_PER_SLOT))),
            backoff: Arc::new(FailureBackoff::new(BackoffConfig::DEFAULT)),
        }
    }

    /// Records a failed CONNECT of `name` from `addr`; returns how long to hold the refusal back.
    pub fn failed(&self, addr: Option<IpAddr>, name: &str) -> Duration {
        self.backoff.failed(addr, name, Instant::now())
    }

    /// Records a successful CONNECT of `name`, which clears its failures.
    pub fn succeeded(&self, name: &str) {
        self.backoff.succeeded(name);
    }

    /// Whether `name`/`secret` is a configured service user (constant-time secret compare).
    pub fn check_service_user(&self, name: &str, secret: &[u8]) -> bool {
        self.service_users
            .get(name)
            .is_some_and(|expected| constant_time_eq(expected.as_bytes(), secret))
    }

    /// Checks a thing's secret. The slow password hash runs on the blocking pool, and a secret
    /// verified once is remembered (as a keyed digest) so reconnect storms stay cheap.
    pub async fn check_thing(&self, thing: &str, secret: &[u8]) -> CredentialCheck {
        let record = match self.store.password_hash(thing).await {
            Ok(Some(record)) => record,
            Ok(None) => return CredentialCheck::Invalid,
            Err(e) => {
                tracing::warn!(%thing, error = %e, "registry unavailable during CONNECT");
                return CredentialCheck::Unavailable;
            }
        };
        let (phc, enabled) = record;
        let valid = match self.verify(thing, secret, phc).await {
            Ok(valid) => valid,
            Err(refused) => return refused,
        };
        match (valid, enabled) {
            (false, _) => CredentialCheck::Invalid,
            (true, false) => CredentialCheck::Disabled,
            (true, true) => CredentialCheck::Valid,
        }
    }

    /// Checks a client certificate's SHA-256 fingerprint (D-82): [`CredentialCheck::Valid`] only
    /// if it is registered on `thing` and the thing is enabled; a certificate registered on
    /// another thing, or on none, is [`CredentialCheck::Invalid`]. The chain to the client CA
    /// and the validity period were checked by the TLS handshake already.
    pub async fn check_certificate(&self, thing: &str, sha256: &[u8; 32]) -> CredentialCheck {
        let Some(store) = self.store.certificates() else {
            return CredentialCheck::Invalid;
        };
        match store
            .certificate_thing(&crate::store::certs::fingerprint_hex(sha256))
            .await
        {
            Ok(Some((owner, _))) if owner != thing => CredentialCheck::Invalid,
            Ok(Some((_, true))) => CredentialCheck::Valid,
            Ok(Some((_, false))) => CredentialCheck::Disabled,
            Ok(None) => CredentialCheck::Invalid,
            Err(e) => {
                tracing::warn!(%thing, error = %e, "certificates unavailable during CONNECT");
                CredentialCheck::Unavailable
            }
        }
    }

    /// Checks a claim connection's secret against its enrollment's claim secret (S-10.1). A
    /// disabled, expired or used-up enrollment still lets the device in: it learns why from
    /// the `rejected` reply (S-10.5), which a refused CONNECT could not tell it.
    pub async fn check_claim(&self, enrollment: &str, secret: &[u8]) -> CredentialCheck {
        let Some(store) = self.store.enrollments() else {
            return CredentialCheck::Unavailable;
        };
        let phc = match store.enrollment(enrollment).await {
            Ok(Some((_, phc))) => phc,
            Ok(None) => return CredentialCheck::Invalid,
            Err(e) => {
                tracing::warn!(%enrollment, error = %e, "enrollments unavailable during CONNECT");
                return CredentialCheck::Unavailable;
            }
        };
        // Cached under `$claim/{enrollment}`, a key no thing id can take.
        let key = format!("{CLAIM_USER_PREFIX}{enrollment}");
        match self.verify(&key, secret, phc).await {
            Ok(true) => CredentialCheck::Valid,
            Ok(false) => CredentialCheck::Invalid,
            Err(refused) => refused,
        }
    }

    /// Whether `secret` matches `phc`, from the cache under `key` or by the slow hash (bounded
    /// by the verification slots and queue; `Err` when they refuse).
    async fn verify(&self, key: &str, secret: &[u8], phc: String) -> Result<bool, CredentialCheck> {
        if self.cache.check(key, secret) {
            return Ok(true);
        }
        let Ok(_queued) = self.verify_queue.try_acquire() else {
            return Err(CredentialCheck::Busy);
        };
        let Ok(_slot) = self.verify_slots.acquire().await else {
            return Err(CredentialCheck::Unavailable);
        };
        let secret_owned = secret.to_vec();
        let ok = tokio::task::spawn_blocking(move || verify_password(&secret_owned, &phc))
            .await
            .unwrap_or(false);
        if ok {
            self.cache.remember(key, secret);
        }
        Ok(ok)
    }
}
