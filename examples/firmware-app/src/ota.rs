//! OTA with a real download (feature `ota-download`): the task's `fileUrl` is read through a
//! [`FileSource`] chunk by chunk into [`OtaVerifier`], which checks size, capacity and checksums
//! and paces the `ongoing` reports; the task ends `done` or `failed` 1400/1403/1404.
//!
//! Without the feature (the thumb build in `examples/firmware`, which has no HTTP client) the
//! thermostat simulates OTA progress instead.

use embassy_futures::select::{Either3, select3};
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_time::{Duration, Ticker, with_deadline, with_timeout};
use iothub_sdk_nostd::spec::payload::OtaTask;
use iothub_sdk_nostd::{Error, Instant, OtaPacing, OtaReport, OtaVerifier, OtaVerifyError};

use crate::{AppClient, AppDevice, Thermostat};

/// Longest `fileUrl` the firmware keeps (longer ones fail 1400).
pub const MAX_URL: usize = 256;
/// Bytes the firmware's update slot holds (larger files fail 1404).
pub const OTA_CAPACITY: u64 = 512 * 1024;
/// Bytes read per chunk.
pub const CHUNK: usize = 512;
/// How long opening the file may take before the URL counts as unusable.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one chunk may take before the download is abandoned (1400).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the firmware reads OTA files from (an HTTP client over the device's network stack).
#[allow(async_fn_in_trait)]
pub trait FileSource {
    /// Why a file could not be read.
    type Error: core::fmt::Debug;
    /// Starts reading `url` (dropping any file opened before); an error means the URL is
    /// unusable.
    async fn open(&mut self, url: &str) -> Result<(), Self::Error>;
    /// The next bytes of the file into `buf`; `Ok(0)` at its end. Must be cancel-safe (a read
    /// dropped before it completes loses no bytes), as tokio's and embassy-net's sockets are.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error>;
}

/// The download of the current OTA task.
#[derive(Debug)]
pub struct Download {
    url: heapless::String<MAX_URL>,
    verifier: OtaVerifier,
    opened: bool,
    ended: bool,
    /// The final report, until the device queued it.
    result: Option<OtaReport<'static>>,
}

impl Download {
    /// Starts the download of `task`: reports `ongoing` 0, or `failed` at once when the task
    /// cannot be run (too large, malformed checksum, URL too long).
    pub(crate) fn start(task: &OtaTask<'_>, dev: &mut AppDevice<'_>, now: Instant) -> Option<Self> {
        let pacing = OtaPacing::default();
        let verifier = match OtaVerifier::new(task, OTA_CAPACITY, pacing, now) {
            Ok(v) => v,
            Err(e) => {
                let _ = dev.report_ota(now, e.report());
                return None;
            }
        };
        let mut d = Download {
            url: heapless::String::new(),
            verifier,
            opened: false,
            ended: false,
            result: None,
        };
        if d.url.push_str(task.file_url).is_err() {
            let r = d.verifier.url_unusable();
            d.end(r, dev, now);
            return Some(d);
        }
        let _ = dev.report_ota(now, OtaReport::Ongoing { progress: 0 });
        Some(d)
    }

    /// Records the final report and sends it if the device can queue it now.
    fn end(&mut self, report: OtaReport<'static>, dev: &mut AppDevice<'_>, now: Instant) {
        self.ended = true;
        self.result = Some(report);
        self.retry(dev, now);
    }

    /// Sends the pending final report; `true` once it is queued (or the task is gone).
    pub(crate) fn retry(&mut self, dev: &mut AppDevice<'_>, now: Instant) -> bool {
        let Some(report) = self.result else {
            return false;
        };
        match dev.report_ota(now, report) {
            Ok(()) | Err(Error::NoOtaTask) => {
                self.result = None;
                true
            }
            // Not connected or the queue is full: the next tick tries again.
            Err(_) => false,
        }
    }

    fn reading(&self) -> bool {
        self.opened && !self.ended
    }

    /// Whether the download ended and its result is queued: nothing left to do.
    pub(crate) fn finished(&self) -> bool {
        self.ended && self.result.is_none()
    }

    /// Takes the outcome of one read.
    fn on_read(
        &mut self,
        read: Result<usize, ()>,
        buf: &[u8],
        dev: &mut AppDevice<'_>,
        now: Instant,
    ) -> bool {
        let step = match read {
            Ok(0) => Err(self
                .verifier
                .finish()
                .unwrap_or_else(OtaVerifyError::report)),
            Ok(n) => match self.verifier.feed(now, buf.get(..n).unwrap_or(buf)) {
                // The chunk is verified; a real device writes it to its update slot here.
                Ok(progress) => Ok(progress),
                Err(e) => Err(e.report()),
            },
            Err(_) => Err(self.verifier.url_unusable()),
        };
        match step {
            Ok(Some(progress)) => {
                // Best effort: a dropped progress report is followed by a later one.
                let _ = dev.report_ota(now, progress);
                true
            }
            Ok(None) => false,
            Err(end) => {
                self.end(end, dev, now);
                true
            }
        }
    }
}

/// [`crate::run`] with real OTA downloads from `source`: events as they come,
/// [`Thermostat::on_tick`] every `tick`, and the current task's file read chunk by chunk.
pub async fn run_downloading<M: RawMutex, S: FileSource, const INBOX_BYTES: usize>(
    mut client: AppClient<'_, '_, M, INBOX_BYTES>,
    thermostat: &mut Thermostat,
    tick: Duration,
    source: &mut S,
) -> ! {
    thermostat.downloads = true;
    let mut ticker = Ticker::every(tick);
    let mut buf = [0u8; CHUNK];
    // The read below is dropped whenever an event or a tick wins the select, so its time limit
    // is a deadline kept across those restarts: a `with_timeout` around each new read would
    // start over on every tick and never expire.
    let mut read_deadline: Option<embassy_time::Instant> = None;
    loop {
        if thermostat.download.as_ref().is_some_and(Download::finished) {
            thermostat.download = None;
        }
        if let Some(d) = thermostat.download.as_mut().filter(|d| !d.opened) {
            d.opened = true;
            let opened = with_timeout(OPEN_TIMEOUT, source.open(&d.url)).await;
            if !matches!(opened, Ok(Ok(()))) {
                let r = d.verifier.url_unusable();
                client.command(|dev, now| d.end(r, dev, now));
            }
        }
        let reading = thermostat.download.as_ref().is_some_and(Download::reading);
        let deadline = if reading {
            *read_deadline.get_or_insert_with(|| embassy_time::Instant::now() + READ_TIMEOUT)
        } else {
            read_deadline = None;
            embassy_time::Instant::MAX
        };
        let read = async {
            if reading {
                match with_deadline(deadline, source.read(&mut buf)).await {
                    Ok(Ok(n)) => Ok(n),
                    _ => Err(()),
                }
            } else {
                core::future::pending().await
            }
        };
        let woke = select3(
            client.next_event(|event, dev, now| thermostat.on_event(event, dev, now)),
            ticker.next(),
            read,
        )
        .await;
        match woke {
            Either3::First(()) => {}
            Either3::Second(()) => client.command(|dev, now| thermostat.on_tick(dev, now)),
            Either3::Third(read) => {
                // A chunk (or the end, or a failure) arrived: the next one gets a new deadline.
                read_deadline = None;
                let reported = client.command(|dev, now| {
                    thermostat
                        .download
                        .as_mut()
                        .is_some_and(|d| d.on_read(read, &buf, dev, now))
                });
                if reported {
                    // Let the runner send the report before the next chunk.
                    embassy_futures::yield_now().await;
                }
            }
        }
    }
}
