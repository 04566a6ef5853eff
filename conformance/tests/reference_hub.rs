//! Runs the whole suite against the reference hub (`hub/`, binary `iothub`) and requires the
//! result to equal `expected/reference-hub.json` (any change, better or worse, fails): once
//! over plain MQTT, once over MQTT over TLS (`--tls`, with a client certificate).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

fn hub_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let exe = env!("CARGO_BIN_EXE_iothub-conformance");
    // The hub lives in another package: use the binary of the same profile, building it when
    // it is missing.
    let profile_dir = PathBuf::from(exe)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let bin = profile_dir.join("iothub");
    if !bin.exists() {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(&root)
            .args(["build", "-p", "iothub-hub", "--bin", "iothub"]);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build for the hub");
        assert!(status.success(), "building the reference hub failed");
    }
    bin
}

/// Runs the suite with `--spawn-hub` and `extra` arguments, against the expected results.
fn run_against_expected(extra: &[String]) {
    let bin = hub_binary();
    let expected = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("expected/reference-hub.json");
    let began = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_iothub-conformance"))
        .args(["hub", "--spawn-hub"])
        .arg(&bin)
        .args(extra)
        .arg("--expect")
        .arg(&expected)
        .output()
        .expect("running iothub-conformance");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The TLS run's cost against the plain one is watched in CI: `--nocapture` shows both.
    eprintln!("suite run {extra:?} took {:?}", began.elapsed());
    assert!(
        out.status.success(),
        "the run differs from expected/reference-hub.json:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("expected-results diff: 0 change(s)"),
        "{stdout}"
    );
}

#[test]
fn reference_hub_matches_expected_results() {
    run_against_expected(&[]);
}

/// Writes `name.pem` and `name.key`; returns the certificate.
fn write_pair(
    dir: &Path,
    name: &str,
    params: CertificateParams,
    issuer: Option<(&rcgen::Certificate, &KeyPair)>,
) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("generating a key");
    let cert = match issuer {
        Some((ca, ca_key)) => params.signed_by(&key, ca, ca_key),
        None => params.self_signed(&key),
    }
    .expect("signing a certificate");
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("writing a certificate");
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("writing a key");
    (cert, key)
}

/// A CA, a server certificate for `localhost` only and a client certificate, all in `dir`.
fn make_certs(dir: &Path) {
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "iothub conformance test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let (ca, ca_key) = write_pair(dir, "ca", ca, None);
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).expect("server name");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    write_pair(dir, "server", server, Some((&ca, &ca_key)));
    let mut client = CertificateParams::default();
    client
        .distinguished_name
        .push(DnType::CommonName, "iothub-conformance");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    write_pair(dir, "client", client, Some((&ca, &ca_key)));
}

/// The same suite and expected results over MQTT over TLS: the hub requires a client
/// certificate (D-71), and its certificate names `localhost` while the suite dials 127.0.0.1,
/// so `--tls-server-name` is exercised too. S-8's crash and restart spawns its hub the same way.
#[test]
fn reference_hub_matches_expected_results_over_tls() {
    let certs = tempfile::tempdir().expect("temp dir");
    make_certs(certs.path());
    let file = |name: &str| {
        certs
            .path()
            .join(name)
            .to_str()
            .expect("utf-8 temp path")
            .to_owned()
    };
    run_against_expected(&[
        "--hub-arg=--mqtts-addr=127.0.0.1:0".to_owned(),
        format!("--hub-arg=--tls-cert={}", file("server.pem")),
        format!("--hub-arg=--tls-key={}", file("server.key")),
        format!("--hub-arg=--tls-client-ca={}", file("ca.pem")),
        "--tls".to_owned(),
        format!("--ca-file={}", file("ca.pem")),
        format!("--client-cert={}", file("client.pem")),
        format!("--client-key={}", file("client.key")),
        "--tls-server-name=localhost".to_owned(),
    ]);
}

/// A hub whose certificate the CA file does not vouch for, and a hub that wants a client
/// certificate the suite lacks: the preflight stops each with one line and exit status 2.
#[test]
fn tls_refusals_stop_the_run_in_the_preflight() {
    let certs = tempfile::tempdir().expect("temp dir");
    make_certs(certs.path());
    let other = tempfile::tempdir().expect("temp dir");
    make_certs(other.path());
    let file =
        |dir: &Path, name: &str| dir.join(name).to_str().expect("utf-8 temp path").to_owned();
    let hub_args = [
        "--hub-arg=--mqtts-addr=127.0.0.1:0".to_owned(),
        format!("--hub-arg=--tls-cert={}", file(certs.path(), "server.pem")),
        format!("--hub-arg=--tls-key={}", file(certs.path(), "server.key")),
        format!("--hub-arg=--tls-client-ca={}", file(certs.path(), "ca.pem")),
        "--tls-server-name=localhost".to_owned(),
        "--tls".to_owned(),
        "--only=S-1.1".to_owned(),
    ];
    let run = |ca: String| {
        let out = Command::new(env!("CARGO_BIN_EXE_iothub-conformance"))
            .args(["hub", "--spawn-hub"])
            .arg(hub_binary())
            .args(&hub_args)
            .arg(format!("--ca-file={ca}"))
            .output()
            .expect("running iothub-conformance");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(out.stdout.is_empty(), "no case ran: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        stderr
    };
    let stderr = run(file(other.path(), "ca.pem"));
    assert!(
        stderr.contains("fails the TLS handshake") && stderr.contains("invalid peer certificate"),
        "{stderr}"
    );
    // TLS 1.3 finishes the client's side of the handshake before the hub checks the client
    // certificate, so the refusal shows when the CONNACK is awaited.
    let stderr = run(file(certs.path(), "ca.pem"));
    assert!(
        stderr.contains("iothub-conformance: preflight: the hub's MQTT address mqtts://")
            && stderr.contains("CertificateRequired"),
        "{stderr}"
    );
}
