//! Fetching an OTA task's file (S-7.1) with progress reports and checks (S-7.2).
//!
//! [`OtaTask::download`] streams `fileUrl` into a file, hashing as it goes, reports `ongoing`
//! with its progress, checks `content-length`, `md5` and `sha256` of the task's `meta`, and
//! reports `failed` with the matching S-7.2 code: 1400 when the URL cannot be used (refused,
//! not found, interrupted, timed out), 1403 when the content is wrong (size or checksum), 1404
//! when it does not fit ([`DownloadOptions::max_bytes`] or a full disk), 500 for other local
//! errors. The verified file is handed to the application, which installs it and then reports
//! [`OtaTask::done`]: a download is not an install, so `done` never comes from here.
//!
//! `http://` URLs always work. `https://` URLs need the `tls` feature and
//! `DownloadOptions::tls` (which roots to trust: e.g. the same rustls config as the thing's
//! connection); without them an `https://` URL fails with 1400.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::OtaTask;
use crate::OtaErrorCode;

/// How [`OtaTask::download`] fetches and checks a file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DownloadOptions {
    /// Directory the file is written to (created if missing).
    pub dir: PathBuf,
    /// Space the device has for the file; a larger file fails with 1404 (no limit if `None`).
    pub max_bytes: Option<u64>,
    /// Report `ongoing` each time the progress grows by this many percent (1 to 100).
    pub progress_step: u8,
    /// Longest time for the whole download.
    pub timeout: Duration,
    /// Longest time to connect to the file server.
    pub connect_timeout: Duration,
    /// TLS for `https://` file URLs (feature `tls`); `None`: `https://` fails with 1400.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl DownloadOptions {
    /// Downloads into `dir`, no size limit, progress every 10 %, 10 minutes at most.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DownloadOptions {
            dir: dir.into(),
            max_bytes: None,
            progress_step: 10,
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(15),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Fetches `https://` URLs with this rustls configuration (its roots decide which servers
    /// are trusted), e.g. one that trusts the same CA as the thing's connection.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Space available for the file (larger files fail with 1404).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// Progress report granularity in percent.
    pub fn progress_step(mut self, percent: u8) -> Self {
        self.progress_step = percent.clamp(1, 100);
        self
    }

    /// Longest time for the whole download.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A downloaded and verified file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Downloaded {
    /// Where it is (named after the task id).
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its MD5, lowercase hex.
    pub md5: String,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

/// Why [`OtaTask::download`] failed; [`DownloadError::code`] is what was reported to the hub.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The URL cannot be used (1400).
    #[error("file url unusable: {0}")]
    UrlUnusable(String),
    /// The content is not the task's file (1403).
    #[error("file content wrong: {0}")]
    ContentWrong(String),
    /// The file does not fit (1404).
    #[error("no space: {0}")]
    NoSpace(String),
    /// A local error while writing the file (500).
    #[error("cannot write the file: {0}")]
    Io(String),
    /// The result could not be reported to the hub.
    #[error("cannot report to the hub: {0}")]
    Report(#[from] crate::Error),
}

impl DownloadError {
    /// The S-7.2 error code reported for this failure (`None` for [`DownloadError::Report`]).
    pub fn code(&self) -> Option<OtaErrorCode> {
        match self {
            DownloadError::UrlUnusable(_) => Some(OtaErrorCode::FileUrlUnusable),
            DownloadError::ContentWrong(_) => Some(OtaErrorCode::FileContentWrong),
            DownloadError::NoSpace(_) => Some(OtaErrorCode::NoSpace),
            DownloadError::Io(_) => Some(OtaErrorCode::Unknown),
            DownloadError::Report(_) => None,
        }
    }

    fn from_io(e: std::io::Error) -> Self {
        if e.kind() == ErrorKind::StorageFull {
            DownloadError::NoSpace(e.to_string())
        } else {
            DownloadError::Io(e.to_string())
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file name from a task id: only `[0-9A-Za-z._-]`, nothing hidden.
fn file_name(task_id: &str) -> String {
    let name: String = task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("ota-{name}")
}

impl OtaTask {
    /// Downloads `fileUrl` into [`DownloadOptions::dir`], reporting progress, and verifies it
    /// against the task's `meta` (see the module docs). A failure is reported as `failed` with
    /// its code before it is returned; no partial file is left. On success the task is still
    /// `ongoing`: install the file, then call [`OtaTask::done`] (or [`OtaTask::failed`]).
    ///
    /// Not cancel-safe: a dropped download leaves the task `ongoing` (and may leave a hidden
    /// `.part` file). Run it in the body of a `select!` branch or in its own task, not as one
    /// of the raced futures.
    pub async fn download(&self, opts: &DownloadOptions) -> Result<Downloaded, DownloadError> {
        match self.fetch(opts).await {
            Ok(file) => Ok(file),
            Err(e) => {
                if let Some(code) = e.code() {
                    tracing::warn!(task = %self.task_id, error = %e, "OTA download failed");
                    self.failed(code, e.to_string()).await?;
                }
                Err(e)
            }
        }
    }

    async fn fetch(&self, opts: &DownloadOptions) -> Result<Downloaded, DownloadError> {
        let fits = |len: u64| opts.max_bytes.is_none_or(|max| len <= max);
        if let Some(len) = self.content_length
            && !fits(len)
        {
            return Err(DownloadError::NoSpace(format!("{len} bytes do not fit")));
        }
        let builder = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.timeout);
        #[cfg(feature = "tls")]
        let builder = match &opts.tls {
            Some(config) => builder.use_preconfigured_tls(rustls::ClientConfig::clone(config)),
            None => builder,
        };
        let client = builder
            .build()
            .map_err(|e| DownloadError::UrlUnusable(e.to_string()))?;
        let mut resp = client
            .get(&self.file_url)
            .send()
            .await
            .map_err(|e| DownloadError::UrlUnusable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(DownloadError::UrlUnusable(format!(
                "HTTP {}",
                resp.status()
            )));
        }
        let total = self.content_length.or(resp.content_length());
        if let Some(len) = total
            && !fits(len)
        {
            return Err(DownloadError::NoSpace(format!("{len} bytes do not fit")));
        }
        tokio::fs::create_dir_all(&opts.dir)
            .await
            .map_err(DownloadError::from_io)?;
        let name = file_name(&self.task_id);
        let part = opts.dir.join(format!(".{name}.part"));
        let path = opts.dir.join(name);
        let result = self.stream(&mut resp, &part, total, opts).await;
        let result = match result {
            Ok(file) => tokio::fs::rename(&part, &path)
                .await
                .map(|()| Downloaded { path, ..file })
                .map_err(DownloadError::from_io),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        result
    }

    async fn stream(
        &self,
        resp: &mut reqwest::Response,
        part: &Path,
        total: Option<u64>,
        opts: &DownloadOptions,
    ) -> Result<Downloaded, DownloadError> {
        let mut file = tokio::fs::File::create(part)
            .await
            .map_err(DownloadError::from_io)?;
        let (mut md5, mut sha256) = (Md5::new(), Sha256::new());
        let mut size = 0u64;
        let mut reported = 0u8;
        let step = opts.progress_step.clamp(1, 100);
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| DownloadError::UrlUnusable(format!("download interrupted: {e}")))?
        {
            size += chunk.len() as u64;
            if opts.max_bytes.is_some_and(|max| size > max) {
                return Err(DownloadError::NoSpace(format!("more than {size} bytes")));
            }
            if self.content_length.is_some_and(|len| size > len) {
                return Err(DownloadError::ContentWrong(
                    "longer than content-length".into(),
                ));
            }
            md5.update(&chunk);
            sha256.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(DownloadError::from_io)?;
            if let Some(total) = total.filter(|t| *t > 0) {
                // 100 only once verified: a download is not an install.
                let percent = (size.saturating_mul(100) / total).min(99) as u8;
                if percent >= reported.saturating_add(step) {
                    reported = percent;
                    self.progress(percent).await?;
                }
            }
        }
        file.sync_all().await.map_err(DownloadError::from_io)?;
        drop(file);
        let file = Downloaded {
            path: part.to_path_buf(),
            size,
            md5: hex(&md5.finalize()),
            sha256: hex(&sha256.finalize()),
        };
        if let Some(len) = self.content_length
            && len != size
        {
            return Err(DownloadError::ContentWrong(format!(
                "{size} bytes, content-length says {len}"
            )));
        }
        if let Some(want) = &self.md5
            && !want.eq_ignore_ascii_case(&file.md5)
        {
            return Err(DownloadError::ContentWrong("md5 mismatch".into()));
        }
        if let Some(want) = &self.sha256
            && !want.eq_ignore_ascii_case(&file.sha256)
        {
            return Err(DownloadError::ContentWrong("sha256 mismatch".into()));
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes() {
        assert_eq!(file_name("job-1"), "ota-job-1");
        assert_eq!(file_name("../x/y"), "ota-.._x_y");
        assert_eq!(
            DownloadError::ContentWrong(String::new()).code(),
            Some(OtaErrorCode::FileContentWrong)
        );
        assert_eq!(
            DownloadError::UrlUnusable(String::new()).code(),
            Some(OtaErrorCode::FileUrlUnusable)
        );
        assert_eq!(
            DownloadError::NoSpace(String::new()).code(),
            Some(OtaErrorCode::NoSpace)
        );
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
