//! A real PostgreSQL server for tests: `initdb` in a temporary directory, `postgres` on a free
//! loopback port, a fresh database per test.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: the server then runs as the `postgres`
//! user (`setpriv`), in a directory owned by it. Every server is started by a small shell
//! watchdog that stops it (fast shutdown) as soon as the test process is gone, so no server
//! outlives its test binary even when a test panics or the binary is killed. A helper that cannot
//! start PostgreSQL panics with the reason and the server's log: it never skips.
//!
//! The binaries are looked up in `/usr/lib/postgresql/<version>/bin` (Debian's layout; the
//! `postgresql` package is installed by `scripts/test` when `initdb` is missing), then in `PATH`.
//!
//! The hub's tests and the conformance suite's run through Mosquitto share it (feature
//! `test-servers`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The superuser `initdb` creates (trust authentication on loopback only).
const USER: &str = "iothub";

/// A PostgreSQL server on 127.0.0.1.
pub struct PgServer {
    bin: PathBuf,
    /// The server's directory (data, socket, log); removed when the server is dropped.
    dir: PathBuf,
    /// The port it listens on.
    pub port: u16,
    watchdog: Option<Child>,
    /// Run as the `postgres` user (we are root).
    as_postgres: bool,
}

/// The server shared by the tests of this process, started on first use.
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start_new)
}

impl PgServer {
    /// Creates and starts a new server of its own (for tests that stop and restart it).
    pub fn start_new() -> PgServer {
        let bin = find_bin();
        let as_postgres = is_root();
        let dir =
            std::env::temp_dir().join(format!("iothub-pg-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(&dir).expect("create postgres temp dir");
        if as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir));
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(dir.join("data")).args([
            "-A",
            "trust",
            "-U",
            USER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(&mut as_user(initdb, as_postgres));
        let port = free_port();
        let mut server = PgServer {
            bin,
            dir,
            port,
            watchdog: None,
            as_postgres,
        };
        server.start();
        server
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh, empty database and returns its URL.
    pub fn fresh_database(&self) -> String {
        let db = format!("t{}_{}", std::process::id(), next_id());
        run(Command::new(self.bin.join("createdb")).args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            USER,
            &db,
        ]));
        self.url(&db)
    }

    /// Starts the (stopped) server again on the same port and data; returns once it accepts
    /// connections.
    pub fn start(&mut self) {
        assert!(self.watchdog.is_none(), "postgres is already running");
        let data = self.dir.join("data");
        let log = self.dir.join("postgres.log");
        let mut postgres = Command::new(self.bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // The test machine's page cache is durable enough for tests that never crash the OS;
            // commits still wait for the WAL write (synchronous_commit stays on).
            .args(["-c", "fsync=off", "-c", "max_connections=300"]);
        let postgres = as_user(postgres, self.as_postgres);
        let line = shell_words(&postgres);
        // The watchdog: stop the server when this test process is gone (or the server died).
        let script = format!(
            "{line} >>'{log}' 2>&1 & pg=$!\n\
             while kill -0 {parent} 2>/dev/null && kill -0 $pg 2>/dev/null; do sleep 0.2; done\n\
             kill -INT $pg 2>/dev/null; wait $pg\n\
             kill -0 {parent} 2>/dev/null || rm -rf '{dir}'",
            log = log.display(),
            parent = std::process::id(),
            dir = self.dir.display(),
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the postgres watchdog shell");
        self.watchdog = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            if let Some(Ok(Some(status))) = self.watchdog.as_mut().map(Child::try_wait) {
                panic!(
                    "postgres exited ({status}) before accepting connections\n--- log ---\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "postgres did not accept connections within {START_TIMEOUT:?}\n--- log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown: sessions are ended, committed data is kept).
    pub fn stop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
            .expect("postmaster.pid of a running server");
        run(Command::new("kill").args(["-INT", &pid]));
        if let Some(mut child) = self.watchdog.take() {
            let _ = child.wait();
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn next_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The directory holding `initdb`, `postgres`, `createdb` and `pg_isready`.
fn find_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some(bin) = versions
        .into_iter()
        .rev()
        .find(|b| b.join("initdb").exists())
    {
        return bin;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").exists() && dir.join("postgres").exists() {
                return dir;
            }
        }
    }
    panic!(
        "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or PATH); \
         `scripts/test` installs the Debian package `postgresql`"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `cmd` run as the `postgres` user when we are root.
fn as_user(cmd: Command, as_postgres: bool) -> Command {
    if !as_postgres {
        return cmd;
    }
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    wrapped.current_dir("/");
    wrapped
}

/// `cmd` as one shell line (every word single-quoted).
fn shell_words(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| format!("'{}'", w.to_string_lossy().replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
