//! Gives SQLite's write-ahead log its full size at start-up, so that commits overwrite the
//! log instead of growing it.
//!
//! # Why
//! With `synchronous=FULL` every commit ends with an `fdatasync` of the WAL. A commit that writes
//! past the end of the file changes its size, so the sync must also commit the filesystem's
//! journal (ext4), and that waits for whatever else the filesystem has pending; a commit that
//! overwrites blocks already written syncs only its data. `scripts/fsync-probe` times both on the
//! data disk: on an idle disk they cost about the same (0.21 vs 0.13 ms p50 here), but while
//! other files are being created (a build, logs, the hub's own database file growing) growth
//! syncs took p90 3.98 / p99 9.09 ms against 1.56 / 4.47 ms for overwrites, and 3.9 ms p50 against
//! 0.12 ms during a cargo build. SQLite starts the log again from its beginning after each writer
//! checkpoint and never shrinks it (the hub sets no `journal_size_limit`), so only the first pass
//! through the log grows it: this module makes that pass happen once, at start-up, by writing
//! zeros; `fallocate` would not do, because writing into reserved-but-unwritten extents changes
//! metadata on every sync as well. BENCHMARKS.md has the effect on update latency.
//!
//! # Why it is safe
//! - It only appends zeros past the log's current end, and only while the caller holds the one
//!   write connection, so no commit is in progress: nothing SQLite wrote is overwritten.
//! - SQLite never reads frames past the last one it committed, and recovery after a crash stops at
//!   the first frame whose salt or checksum does not match, as it does whenever it reuses a log;
//!   zeros never match.
//! - It must run after SQLite put the database in WAL mode: SQLite deletes a WAL that it finds
//!   beside a database that is not (yet) in WAL mode.
//! - The hub is the only process that writes its database.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The WAL file SQLite uses for the database at `db`.
pub(super) fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Bytes of a WAL holding `pages` frames of `page_size` bytes (32-byte header, 24-byte frame
/// headers).
pub(super) fn wal_bytes(pages: u64, page_size: u64) -> u64 {
    32 + pages * (24 + page_size)
}

/// Extends the existing WAL of `db` with durable zeros until it is `bytes` long. Returns the bytes
/// added. The caller must hold the database's only write connection. Blocking: call it from a
/// blocking thread.
pub(super) fn extend(db: &Path, bytes: u64) -> std::io::Result<u64> {
    let wal = wal_path(db);
    let mut file = OpenOptions::new().write(true).open(&wal)?;
    let len = file.metadata()?.len();
    if len >= bytes {
        return Ok(0);
    }
    file.seek(SeekFrom::Start(len))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes - len;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    if let Some(dir) = wal.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(bytes - len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn appends_zeros_after_the_content_and_never_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("hub.db");
        let wal = wal_path(&db);
        assert!(
            extend(&db, 1 << 20).is_err(),
            "no WAL yet: nothing to extend"
        );

        std::fs::write(&wal, b"committed frames").unwrap();
        assert_eq!(extend(&db, 3 << 20).unwrap(), (3 << 20) - 16);
        let bytes = std::fs::read(&wal).unwrap();
        assert_eq!(bytes.len(), 3 << 20);
        assert_eq!(&bytes[..16], b"committed frames");
        assert!(bytes[16..].iter().all(|b| *b == 0));

        assert_eq!(extend(&db, 1 << 20).unwrap(), 0);
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 3 << 20);
    }

    #[test]
    fn wal_path_appends_the_suffix() {
        assert_eq!(
            wal_path(Path::new("/data/iothub.db")),
            PathBuf::from("/data/iothub.db-wal")
        );
        assert_eq!(wal_bytes(2, 4096), 32 + 2 * 4120);
    }
}
