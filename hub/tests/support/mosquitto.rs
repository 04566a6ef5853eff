//! A real Mosquitto 2.0 with its dynamic-security plugin, started on a free loopback port in a
//! temp dir and set up for the hub as docs/running-at-scale.md says (the external broker mode,
//! D-60..D-66). Needs Debian's `mosquitto` package (`scripts/test` installs it).

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Hub, STEP};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const DYNSEC_PLUGIN: &str = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so";
const ADMIN_PW: &str = "admin-secret";
pub const HUB_USER: &str = "$hub";
pub const HUB_PW: &str = "hub-secret";

/// A Mosquitto 2.0 with dynamic security, killed on drop.
pub struct Mosquitto {
    child: Child,
    dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Mosquitto {
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
        let deadline = Instant::now() + STEP;
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

    /// Kills the broker (an injected failure: the hub loses it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// A hub joined to this broker.
    pub fn hub(&self) -> Hub {
        self.hub_with(&[])
    }

    /// A hub joined to this broker, with `extra` flags (a shared `--database-url` and an
    /// `--instance-id` make it one of several instances, D-73).
    pub fn hub_with(&self, extra: &[&str]) -> Hub {
        let pw_file: PathBuf = self.dir.path().join("hub-password");
        fs::write(&pw_file, format!("{HUB_PW}\n")).expect("password file");
        let url = self.url();
        let mut args = vec![
            "--broker",
            &url,
            "--broker-username",
            HUB_USER,
            "--broker-password-file",
            pw_file.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        let hub = Hub::start_args(&args);
        assert_eq!(hub.mqtt, self.addr, "devices are sent to the broker");
        hub
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
