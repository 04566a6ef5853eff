//! Chunked OTA verification (S-7): the application downloads the task's `fileUrl` itself and feeds
//! the bytes here chunk by chunk; the verifier tracks the size against `content-length` and the
//! device's capacity, hashes MD5 and/or SHA-256 incrementally (no heap), paces `ongoing` progress
//! reports and ends with `done` or `failed` with the S-7.2 code.
//!
//! Everything it returns is an [`OtaReport`] for [`crate::Device::report_ota`]: no new payloads.
//!
//! Cost (feature `ota-verify`): 9,088 bytes of flash on `thumbv7em-none-eabihf` with
//! `examples/firmware`'s release profile (a probe firmware calling `new`, `feed` and `finish`
//! with opaque inputs, minus the empty `baseline`; MD5's compression ~1.9 KB, SHA-256's
//! ~2.1 KB), no static RAM, and the verifier itself (about 340 bytes) wherever the
//! application keeps it.
//!
//! ```
//! # use iothub_sdk_nostd::{Instant, OtaPacing, OtaReport, OtaVerifier};
//! # use iothub_sdk_nostd::spec::payload::{OtaMeta, OtaTask};
//! # let meta = OtaMeta { version: "1", md5: Some("900150983cd24fb0d6963f7d28e17f72"),
//! #     sha256: None, content_type: None, content_length: Some(3) };
//! # let task = OtaTask { client_token: "c", task_id: "t", r#type: "app", meta, file_url: "u" };
//! let now = Instant::from_millis(0);
//! let mut v = OtaVerifier::new(&task, 64 * 1024, OtaPacing::default(), now)?;
//! for chunk in [&b"a"[..], b"bc"] {
//!     // write `chunk` to flash only after `feed` accepted it
//!     if let Some(report) = v.feed(now, chunk)? {
//!         // device.report_ota(now, report)?;
//! #       let _ = report;
//!     }
//! }
//! assert_eq!(v.finish()?, OtaReport::Done);
//! # Ok::<(), iothub_sdk_nostd::OtaVerifyError>(())
//! ```

use core::fmt;

use iothub_spec::code::OtaErrorCode;
use iothub_spec::payload::OtaTask;
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::time::Instant;
use crate::types::OtaReport;

/// When [`OtaVerifier::feed`] asks for an `ongoing` report (always when 100 % is reached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtaPacing {
    /// A report as soon as the percentage rose by at least this many points since the last one
    /// (0 is taken as 1).
    pub min_step: u8,
    /// A report once this many milliseconds passed since the last one, if the percentage rose at
    /// all.
    pub min_interval_ms: u64,
}

impl Default for OtaPacing {
    /// Every 10 points, or every 5 s when the download is slow.
    fn default() -> Self {
        OtaPacing {
            min_step: 10,
            min_interval_ms: 5_000,
        }
    }
}

/// Why an OTA download failed; [`OtaVerifyError::code`] is its S-7.2 `errCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtaVerifyError {
    /// A checksum in the task's `meta` is not hex of the right length (400).
    BadChecksum,
    /// The task's `content-length` or the bytes fed exceed the capacity the application gave
    /// (1404).
    NoSpace,
    /// More bytes than `content-length` (1403).
    TooLong,
    /// Fewer bytes than `content-length` at the end (1403).
    TooShort,
    /// The MD5 of the bytes differs from `meta.md5` (1403).
    Md5Mismatch,
    /// The SHA-256 of the bytes differs from `meta.sha256` (1403).
    Sha256Mismatch,
    /// The application could not use `fileUrl` (1400).
    UrlUnusable,
}

impl OtaVerifyError {
    /// The S-7.2 error code.
    pub const fn code(self) -> OtaErrorCode {
        match self {
            OtaVerifyError::BadChecksum => OtaErrorCode::BadTask,
            OtaVerifyError::NoSpace => OtaErrorCode::NoSpace,
            OtaVerifyError::TooLong
            | OtaVerifyError::TooShort
            | OtaVerifyError::Md5Mismatch
            | OtaVerifyError::Sha256Mismatch => OtaErrorCode::FileContentWrong,
            OtaVerifyError::UrlUnusable => OtaErrorCode::FileUrlUnusable,
        }
    }

    /// A short lowercase reason, sent as `errMsg`.
    pub const fn message(self) -> &'static str {
        match self {
            OtaVerifyError::BadChecksum => "malformed checksum in task",
            OtaVerifyError::NoSpace => "file larger than the device's capacity",
            OtaVerifyError::TooLong => "more bytes than content-length",
            OtaVerifyError::TooShort => "fewer bytes than content-length",
            OtaVerifyError::Md5Mismatch => "md5 mismatch",
            OtaVerifyError::Sha256Mismatch => "sha256 mismatch",
            OtaVerifyError::UrlUnusable => "file url unusable",
        }
    }

    /// The `failed` report for [`crate::Device::report_ota`].
    pub const fn report(self) -> OtaReport<'static> {
        OtaReport::Failed {
            code: self.code(),
            message: Some(self.message()),
        }
    }
}

impl fmt::Display for OtaVerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.code().as_u16())
    }
}

impl core::error::Error for OtaVerifyError {}

/// Verifies one OTA task's file as the application feeds it (module docs show the loop).
///
/// Holds the expected sizes and digests decoded from the task (nothing borrowed) and the running
/// hash states: about 340 bytes, no heap. After the first error every call returns that error.
#[derive(Clone)]
pub struct OtaVerifier {
    expected_len: Option<u64>,
    capacity: u64,
    received: u64,
    md5: Option<(Md5, [u8; 16])>,
    sha256: Option<(Sha256, [u8; 32])>,
    pacing: OtaPacing,
    last_progress: u8,
    last_report: Instant,
    failed: Option<OtaVerifyError>,
}

impl fmt::Debug for OtaVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtaVerifier")
            .field("expected_len", &self.expected_len)
            .field("capacity", &self.capacity)
            .field("received", &self.received)
            .field("md5", &self.md5.is_some())
            .field("sha256", &self.sha256.is_some())
            .field("last_progress", &self.last_progress)
            .field("failed", &self.failed)
            .finish()
    }
}

impl OtaVerifier {
    /// Starts verifying `task`'s file on a device that can hold `capacity` bytes; `now` starts
    /// the pacing clock. Fails with [`OtaVerifyError::NoSpace`] when the task's `content-length`
    /// exceeds `capacity`, and [`OtaVerifyError::BadChecksum`] for a checksum that is not hex of
    /// the right length. Report the error with [`OtaVerifyError::report`].
    pub fn new(
        task: &OtaTask<'_>,
        capacity: u64,
        pacing: OtaPacing,
        now: Instant,
    ) -> Result<Self, OtaVerifyError> {
        let expected_len = task.meta.content_length;
        if expected_len.is_some_and(|n| n > capacity) {
            return Err(OtaVerifyError::NoSpace);
        }
        let md5 = match task.meta.md5 {
            Some(hex) => Some((Md5::new(), decode_hex(hex)?)),
            None => None,
        };
        let sha256 = match task.meta.sha256 {
            Some(hex) => Some((Sha256::new(), decode_hex(hex)?)),
            None => None,
        };
        Ok(OtaVerifier {
            expected_len,
            capacity,
            received: 0,
            md5,
            sha256,
            pacing,
            last_progress: 0,
            last_report: now,
            failed: None,
        })
    }

    /// Takes the next downloaded chunk. `Ok(Some(report))` is an `ongoing` report due now under
    /// the pacing. An error means the chunk was refused (do not store it) and the task failed:
    /// [`OtaVerifyError::NoSpace`] past the capacity, [`OtaVerifyError::TooLong`] past
    /// `content-length`.
    pub fn feed(
        &mut self,
        now: Instant,
        chunk: &[u8],
    ) -> Result<Option<OtaReport<'static>>, OtaVerifyError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        let total = self.received.saturating_add(len);
        if total > self.capacity {
            return Err(self.fail(OtaVerifyError::NoSpace));
        }
        if self.expected_len.is_some_and(|n| total > n) {
            return Err(self.fail(OtaVerifyError::TooLong));
        }
        self.received = total;
        if let Some((h, _)) = self.md5.as_mut() {
            h.update(chunk);
        }
        if let Some((h, _)) = self.sha256.as_mut() {
            h.update(chunk);
        }
        let Some(progress) = self.progress() else {
            return Ok(None);
        };
        let rose = progress.saturating_sub(self.last_progress);
        let due = rose >= self.pacing.min_step.max(1)
            || (rose > 0 && progress == 100)
            || (rose > 0 && now.millis_since(self.last_report) >= self.pacing.min_interval_ms);
        if !due {
            return Ok(None);
        }
        self.last_progress = progress;
        self.last_report = now;
        Ok(Some(OtaReport::Ongoing { progress }))
    }

    /// Ends the download: `Ok(OtaReport::Done)` when the size matches `content-length` (if
    /// given) and every checksum given matches; else the error ([`OtaVerifyError::TooShort`],
    /// [`OtaVerifyError::Md5Mismatch`], [`OtaVerifyError::Sha256Mismatch`], or an earlier one).
    /// Install the file before sending `done`: S-7.2's `done` means installed.
    pub fn finish(&mut self) -> Result<OtaReport<'static>, OtaVerifyError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.expected_len.is_some_and(|n| self.received < n) {
            return Err(self.fail(OtaVerifyError::TooShort));
        }
        if let Some((h, want)) = self.md5.take()
            && h.finalize().as_slice() != want.as_slice()
        {
            return Err(self.fail(OtaVerifyError::Md5Mismatch));
        }
        if let Some((h, want)) = self.sha256.take()
            && h.finalize().as_slice() != want.as_slice()
        {
            return Err(self.fail(OtaVerifyError::Sha256Mismatch));
        }
        Ok(OtaReport::Done)
    }

    /// The application could not use `fileUrl` (unreachable, refused, not found): the task fails
    /// with 1400. Returns the report to send.
    pub fn url_unusable(&mut self) -> OtaReport<'static> {
        self.fail(OtaVerifyError::UrlUnusable).report()
    }

    /// Bytes accepted so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Percent of `content-length` received (0..=100), `None` without a `content-length`.
    pub fn progress(&self) -> Option<u8> {
        let n = self.expected_len?;
        if n == 0 {
            return Some(100);
        }
        let pct = u128::from(self.received) * 100 / u128::from(n);
        Some(u8::try_from(pct.min(100)).unwrap_or(100))
    }

    fn fail(&mut self, e: OtaVerifyError) -> OtaVerifyError {
        *self.failed.get_or_insert(e)
    }
}

/// Decodes a hex digest of exactly `N` bytes (either case).
fn decode_hex<const N: usize>(hex: &str) -> Result<[u8; N], OtaVerifyError> {
    let hex = hex.as_bytes();
    if hex.len() != N * 2 {
        return Err(OtaVerifyError::BadChecksum);
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let [hi, lo] = pair else {
            return Err(OtaVerifyError::BadChecksum);
        };
        *byte = (nibble(*hi)? << 4) | nibble(*lo)?;
    }
    Ok(out)
}

fn nibble(c: u8) -> Result<u8, OtaVerifyError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(OtaVerifyError::BadChecksum),
    }
}
