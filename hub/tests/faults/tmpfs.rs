//! A real, small tmpfs for the database, which the test fills, frees and grows.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"2m"`). Panics with the reason when it cannot: this suite
    /// needs root (CI runs as root) and never skips.
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the disk-full tests need a tmpfs and could not mount one (root needed): {}\n\
             The same claims are also checked without a mount by the `injected` tests.",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `sqlite://` URL of a database file on this tmpfs.
    pub fn database_url(&self) -> String {
        format!("sqlite://{}", self.path().join("iothub.db").display())
    }

    /// Changes the size (e.g. grows it while the hub runs).
    pub fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Takes every free byte with a file of zeros; returns its size.
    pub fn fill(&self) -> u64 {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("create filler");
        let block = vec![0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        std::fs::metadata(self.filler())
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Bytes used by the file `name` on this tmpfs (0 if absent).
    pub fn file_len(&self, name: &str) -> u64 {
        std::fs::metadata(self.path().join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a hub killed a moment ago may still be closing its files.
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}
