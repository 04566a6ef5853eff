//! OTA (S-7): the task stream and progress reporting; [`OtaTask::download`] fetches and
//! verifies a task's file.

use futures_util::Stream;
use iothub_spec::code::OtaErrorCode;
use tokio::sync::watch;

use crate::driver::{Command, OtaUpdate};
use crate::error::Result;
use crate::thing::Thing;

#[cfg(feature = "ota-download")]
#[path = "ota_download.rs"]
mod download;
#[cfg(feature = "ota-download")]
pub use download::{DownloadError, DownloadOptions, Downloaded};

pub(crate) type OtaHandler = std::sync::Arc<
    dyn Fn(OtaTask) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// An OTA task received from the hub (S-7.1). Report on it with [`OtaTask::progress`],
/// [`OtaTask::done`], [`OtaTask::failed`] or [`OtaTask::canceled`] (S-7.2).
///
/// The flow: fetch the file (`OtaTask::download` with the default `ota-download` feature, or
/// your own client), install it, then report [`OtaTask::done`]. `done` is never sent by the
/// SDK on its own: the hub must not see a task finished before the image is installed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OtaTask {
    /// The task id.
    pub task_id: String,
    /// `app`, `appconfig`, `os` or another type.
    pub task_type: String,
    /// `meta.version`: the version to install.
    pub version: String,
    /// `meta.md5`, when given.
    pub md5: Option<String>,
    /// `meta.sha256`, when given.
    pub sha256: Option<String>,
    /// `meta.content-type`, when given.
    pub content_type: Option<String>,
    /// `meta.content-length`, when given.
    pub content_length: Option<u64>,
    /// Where to download the file.
    pub file_url: String,
    pub(crate) thing: Option<Thing>,
}

impl OtaTask {
    async fn report(&self, update: OtaUpdate) -> Result<()> {
        let thing = self.thing.as_ref().ok_or(crate::Error::Closed)?;
        let task_id = self.task_id.clone();
        thing
            .request(|reply| Command::Ota {
                task_id,
                update,
                reply,
            })
            .await
    }

    /// Reports `ongoing` with `percent` done (capped at 100).
    pub async fn progress(&self, percent: u8) -> Result<()> {
        self.report(OtaUpdate::Progress(percent)).await
    }

    /// Reports `done`: the new image is installed and the task is over. Call it only after
    /// the install succeeded (after a reboot into the new image, if that is how it installs).
    pub async fn done(&self) -> Result<()> {
        self.report(OtaUpdate::Done).await
    }

    /// Reports `failed` with an S-7.2 code and a reason: the task is over.
    pub async fn failed(&self, code: OtaErrorCode, message: impl Into<String>) -> Result<()> {
        self.report(OtaUpdate::Failed(code, message.into())).await
    }

    /// Reports `canceled`: the device gave up; the task is over.
    pub async fn canceled(&self) -> Result<()> {
        self.report(OtaUpdate::Canceled).await
    }
}

/// OTA tasks of a thing; get one with [`Thing::ota`].
#[derive(Debug, Clone)]
pub struct Ota {
    pub(crate) thing: Thing,
}

impl Ota {
    /// The OTA tasks the hub sends, starting with the one in progress, if any (a task that
    /// arrived before this call is not missed). Cancel-safe: `tasks.next()` in a
    /// `tokio::select!` that loses the race keeps the task for the next call.
    ///
    /// **Newest wins**: the device works on one task at a time (S-7); a task not yet taken
    /// from the stream is replaced by a newer one, whose arrival also makes reports on the
    /// older one fail with [`crate::Error::OtaTaskGone`]. The hub sends a pending task again
    /// when the thing reconnects; a task already finished is answered with its final result
    /// by the device core and not handed out again. The stream ends when the thing is closed.
    pub fn tasks(&self) -> impl Stream<Item = OtaTask> + Send + Unpin + 'static {
        let mut rx = self.thing.shared.ota.clone();
        rx.mark_changed();
        let thing = self.thing.clone();
        Box::pin(futures_util::stream::unfold(
            (rx, thing),
            |(mut rx, thing): (watch::Receiver<Option<OtaTask>>, Thing)| async move {
                loop {
                    rx.changed().await.ok()?;
                    let task = rx.borrow_and_update().clone();
                    if let Some(mut t) = task {
                        t.thing = Some(thing.clone());
                        return Some((t, (rx, thing)));
                    }
                }
            },
        ))
    }
}
