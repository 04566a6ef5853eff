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

//! # Never the last of the disk
//! Pre-allocation is only a speed-up, so it never takes space the database itself may need: it
//! runs only when the filesystem keeps [`keep_free`] bytes free afterwards, and when writing the
//! zeros fails anyway (another process filled the disk meanwhile) the log is cut back to its
//! length before, so no partial pre-allocation is left behind.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
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

/// Bytes the filesystem must still have free after a pre-allocation: 10 % of its size, at least
/// 64 MiB and at most 1 GiB.
pub(super) fn keep_free(fs_bytes: u64) -> u64 {
    (fs_bytes / 10).clamp(64 << 20, 1 << 30)
}

/// What [`extend`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Extended {
    /// The log was extended by `added` bytes (0 when it was long enough already).
    Added(u64),
    /// Skipped: `needed` more bytes would have left less than `keep` of the `free` bytes.
    NoRoom { needed: u64, free: u64, keep: u64 },
}

/// Free and total bytes of the filesystem holding `path` (for unprivileged users).
fn space(path: &Path) -> io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(path)?;
    Ok((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

/// Extends the existing WAL of `db` with durable zeros until it is `bytes` long, if the
/// filesystem has room to spare (see the module docs). The caller must hold the database's only
/// write connection. Blocking: call it from a blocking thread.
///
/// On an error while writing, the log is cut back to its former length before the error is
/// returned.
pub(super) fn extend(db: &Path, bytes: u64) -> io::Result<Extended> {
    extend_with(db, bytes, space, u64::MAX)
}

/// [`extend`] with the free-space query and a write limit (bytes after which writing fails as a
/// full disk would) as parameters, for tests.
fn extend_with(
    db: &Path,
    bytes: u64,
    space: impl FnOnce(&Path) -> io::Result<(u64, u64)>,
    write_limit: u64,
) -> io::Result<Extended> {
    let wal = wal_path(db);
    let mut file = OpenOptions::new().write(true).open(&wal)?;
    let len = file.metadata()?.len();
    if len >= bytes {
        return Ok(Extended::Added(0));
    }
    let needed = bytes - len;
    let (free, total) = space(&wal)?;
    let keep = keep_free(total);
    if free < needed.saturating_add(keep) {
        return Ok(Extended::NoRoom { needed, free, keep });
    }
    if let Err(e) = write_zeros(&mut file, len, needed, write_limit) {
        // Best effort: the original error is what the caller must see.
        let _ = file.set_len(len).and_then(|()| file.sync_all());
        return Err(e);
    }
    if let Some(dir) = wal.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(Extended::Added(needed))
}

fn write_zeros(file: &mut File, from: u64, count: u64, limit: u64) -> io::Result<()> {
    file.seek(SeekFrom::Start(from))?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = count;
    let mut written = 0u64;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        if written + n as u64 > limit {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        file.write_all(&zeros[..n])?;
        left -= n as u64;
        written += n as u64;
    }
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Plenty of room on a large filesystem.
    fn roomy(_: &Path) -> io::Result<(u64, u64)> {
        Ok((100 << 30, 200 << 30))
    }

    #[test]
    fn appends_zeros_after_the_content_and_never_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("hub.db");
        let wal = wal_path(&db);
        assert!(
            extend_with(&db, 1 << 20, roomy, u64::MAX).is_err(),
            "no WAL yet: nothing to extend"
        );

        std::fs::write(&wal, b"committed frames").unwrap();
        assert_eq!(
            extend_with(&db, 3 << 20, roomy, u64::MAX).unwrap(),
            Extended::Added((3 << 20) - 16)
        );
        let bytes = std::fs::read(&wal).unwrap();
        assert_eq!(bytes.len(), 3 << 20);
        assert_eq!(&bytes[..16], b"committed frames");
        assert!(bytes[16..].iter().all(|b| *b == 0));

        assert_eq!(
            extend_with(&db, 1 << 20, roomy, u64::MAX).unwrap(),
            Extended::Added(0)
        );
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 3 << 20);
    }

    #[test]
    fn leaves_the_margin_free_and_skips_otherwise() {
        assert_eq!(keep_free(2 << 20), 64 << 20, "small disks keep 64 MiB");
        assert_eq!(keep_free(2 << 30), (2 << 30) / 10, "10 % in between");
        assert_eq!(keep_free(1 << 40), 1 << 30, "at most 1 GiB");

        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("hub.db");
        let wal = wal_path(&db);
        std::fs::write(&wal, b"frames").unwrap();
        // 100 MiB free on a 200 MiB disk: 64 MiB must stay free, so 40 MiB do not fit.
        let tight = |_: &Path| Ok((100 << 20, 200 << 20));
        assert_eq!(
            extend_with(&db, (40 << 20) + 6, tight, u64::MAX).unwrap(),
            Extended::NoRoom {
                needed: 40 << 20,
                free: 100 << 20,
                keep: 64 << 20
            }
        );
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 6, "untouched");
        assert_eq!(
            extend_with(&db, (36 << 20) + 6, tight, u64::MAX).unwrap(),
            Extended::Added(36 << 20)
        );
    }

    #[test]
    fn a_failed_extension_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("hub.db");
        let wal = wal_path(&db);
        std::fs::write(&wal, b"committed frames").unwrap();
        // The disk "fills" after 2 MiB of the 8 MiB.
        let err = extend_with(&db, 8 << 20, roomy, 2 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(std::fs::read(&wal).unwrap(), b"committed frames");
    }

    /// The real free-space query answers for the test's own directory.
    #[test]
    fn statvfs_reports_free_and_total() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = space(dir.path()).unwrap();
        assert!(total > 0 && free <= total, "{free} / {total}");
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
