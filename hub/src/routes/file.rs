//! The file and stdout sinks: one JSON object per line ([`super::wire::MessageView`]).
//!
//! A file is appended to and flushed to disk (`sync_data`) before the batch counts as
//! delivered; once it reaches `maxBytes` it is renamed `path.1` (older ones shift to `.2`, ...,
//! the oldest beyond `keep` is deleted) and a new file is started.

use std::path::PathBuf;

use tokio::io::AsyncWriteExt as _;

use super::wire::MessageView;
use crate::store::routes::StoredMessage;

pub(super) enum JsonLines {
    Stdout,
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: u32,
    },
}

impl JsonLines {
    pub(super) fn stdout() -> JsonLines {
        JsonLines::Stdout
    }

    pub(super) fn file(path: &str, max_bytes: u64, keep: u32) -> JsonLines {
        JsonLines::File {
            path: PathBuf::from(path),
            max_bytes,
            keep,
        }
    }

    pub(super) async fn deliver(
        &mut self,
        route: &str,
        batch: &[StoredMessage],
    ) -> Result<(), String> {
        let mut text = Vec::with_capacity(batch.len() * 256);
        for m in batch {
            serde_json::to_writer(&mut text, &MessageView::of(Some(route), m))
                .map_err(|e| e.to_string())?;
            text.push(b'\n');
        }
        match self {
            JsonLines::Stdout => {
                let mut out = tokio::io::stdout();
                out.write_all(&text)
                    .await
                    .map_err(|e| format!("stdout: {e}"))?;
                out.flush().await.map_err(|e| format!("stdout: {e}"))
            }
            JsonLines::File {
                path,
                max_bytes,
                keep,
            } => append(path, *max_bytes, *keep, &text).await,
        }
    }
}

fn rotated(path: &std::path::Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

async fn append(
    path: &std::path::Path,
    max_bytes: u64,
    keep: u32,
    text: &[u8],
) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        tokio::fs::create_dir_all(parent).await.map_err(err)?;
    }
    let size = match tokio::fs::metadata(path).await {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(err(e)),
    };
    if size > 0 && size + text.len() as u64 > max_bytes {
        let _ = tokio::fs::remove_file(rotated(path, keep)).await;
        for n in (1..keep).rev() {
            let from = rotated(path, n);
            if tokio::fs::try_exists(&from).await.unwrap_or(false) {
                tokio::fs::rename(&from, rotated(path, n + 1))
                    .await
                    .map_err(err)?;
            }
        }
        tokio::fs::rename(path, rotated(path, 1))
            .await
            .map_err(err)?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(err)?;
    file.write_all(text).await.map_err(err)?;
    file.sync_data().await.map_err(err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::routes::NewMessage;

    fn msg(seq: u64) -> StoredMessage {
        StoredMessage {
            seq,
            message: NewMessage {
                thing_id: "t1".into(),
                source: "telemetry".into(),
                topic: "x".into(),
                payload: br#"{"n":1}"#.to_vec(),
                received_at: 5,
            },
        }
    }

    #[tokio::test]
    async fn files_rotate_by_size_and_keep_a_bounded_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut sink = JsonLines::file(path.to_str().unwrap(), 1024, 2);
        for seq in 0..40 {
            sink.deliver("r", &[msg(seq)]).await.unwrap();
        }
        let first = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
        assert_eq!(line["payload"]["n"], 1);
        assert_eq!(line["thingId"], "t1");
        assert!(std::fs::metadata(&path).unwrap().len() <= 1024);
        assert!(rotated(&path, 1).exists());
        assert!(rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
    }
}
