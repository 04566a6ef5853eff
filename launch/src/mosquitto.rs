//! A real Mosquitto 2.0 with its dynamic-security plugin for tests: started on a free loopback
//! port in a temporary directory and set up for the hub as docs/running-at-scale.md says (the
//! external broker mode, D-60..D-66 of docs/spec.md). Needs Debian's `mosquitto` package
//! (`scripts/test` installs it). Like [`crate::postgres`], a helper that cannot start the broker
//! panics with the reason: it never skips.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const DYNSEC_PLUGIN: &str = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so";
const ADMIN_PW: &str = "admin-secret";
/// How long the broker may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The hub's own account on the broker (D-66).
pub const HUB_USER: &str = "$hub";
/// Its password.
pub const HUB_PW: &str = "hub-secret";

/// A Mosquitto 2.0 with dynamic security, killed on drop.
pub struct Mosquitto {
    child: Child,
    dir: tempfile::TempDir,
    /// Where it listens (where devices connect).
    pub addr: SocketAddr,
}

impl Mosquitto {
    /// Starts a broker with the hub's account `$hub` (password [`HUB_PW`]) and its role, as
    /// docs/running-at-scale.md sets them up.
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("temp dir");
        // Mosquitto started as root drops to its own user, which must write its state here.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod dir");
        let dynsec = dir.path().join("dynsec.json");
        let init = Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&dynsec)
            .args(["admin", ADMIN_PW])
            .output()
            .expect("mosquitto_ctrl (apt-get install mosquitto)");
        assert!(init.status.success(), "dynsec init: {init:?}");
        fs::set_permissions(&dynsec, fs::Permissions::from_mode(0o666)).expect("chmod dynsec");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let conf = dir.path().join("mosquitto.conf");
        fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous false\n\
                 set_tcp_nodelay true\n\
                 persistence false\n\
                 plugin {DYNSEC_PLUGIN}\n\
                 plugin_opt_config_file {}\n\
                 log_dest topic\n\
                 log_dest stderr\n\
                 log_type notice\n\
                 log_type subscribe\n",
                dynsec.display()
            ),
        )
        .expect("write mosquitto.conf");
        let log = fs::File::create(dir.path().join("mosquitto.log")).expect("log file");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let m = Mosquitto { child, dir, addr };
        // The hub's own account, as docs/running-at-scale.md sets it up.
        m.ctrl(&["createRole", "iothub-hub"]);
        for (acltype, topic) in [
            ("publishClientSend", "$iothub/#"),
            ("subscribePattern", "$iothub/#"),
            ("publishClientSend", "$CONTROL/dynamic-security/#"),
            ("publishClientReceive", "$CONTROL/dynamic-security/#"),
            ("subscribePattern", "$CONTROL/dynamic-security/#"),
            ("subscribePattern", "$SYS/broker/log/#"),
        ] {
            m.ctrl(&["addRoleACL", "iothub-hub", acltype, topic, "allow"]);
        }
        m.ctrl(&["createClient", HUB_USER, "-p", HUB_PW]);
        m.ctrl(&["addClientRole", HUB_USER, "iothub-hub"]);
        m
    }

    /// `mosquitto_ctrl dynsec ARGS` as the broker's admin; its standard output.
    pub fn ctrl(&self, args: &[&str]) -> String {
        let out = Command::new("mosquitto_ctrl")
            .args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .args(["-u", "admin", "-P", ADMIN_PW, "dynsec"])
            .args(args)
            .output()
            .expect("mosquitto_ctrl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "mosquitto_ctrl {args:?}: {out:?}");
        stdout
    }

    /// An account of the operator's for a business system (`name` should start with `$`, as a
    /// service user's does, S-1.5): its role lets it publish and subscribe anywhere under
    /// `$iothub/`, as docs/running-at-scale.md describes. The hub neither creates nor checks it.
    pub fn add_service_account(&self, name: &str, secret: &str) {
        let role = "iothub-service";
        if !self.ctrl(&["listRoles"]).lines().any(|l| l.trim() == role) {
            self.ctrl(&["createRole", role]);
            for acltype in ["publishClientSend", "subscribePattern"] {
                self.ctrl(&["addRoleACL", role, acltype, "$iothub/#", "allow"]);
            }
        }
        self.ctrl(&["createClient", name, "-p", secret]);
        self.ctrl(&["addClientRole", name, role]);
    }

    /// Kills the broker (an injected failure: the hub loses it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `mqtt://127.0.0.1:PORT`, the hub's `--broker`.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// The flags that join a hub to this broker as `$hub` (`--broker`, `--broker-username`,
    /// `--broker-password-file` with a file in the broker's directory).
    pub fn hub_args(&self) -> Vec<String> {
        let pw_file = self.dir.path().join("hub-password");
        fs::write(&pw_file, format!("{HUB_PW}\n")).expect("password file");
        vec![
            "--broker".to_owned(),
            self.url(),
            "--broker-username".to_owned(),
            HUB_USER.to_owned(),
            "--broker-password-file".to_owned(),
            pw_file.to_str().expect("utf-8 path").to_owned(),
        ]
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
