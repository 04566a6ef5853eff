//! Puts the board's memory layout where cortex-m-rt's link.x finds it as `memory.x`: the
//! STM32F429ZI's (`memory/stm32f429zi.x`) by default, QEMU mps2-an386's
//! (`memory/qemu-mps2.x`) with the `qemu-mps2` feature. (No `memory.x` in the package root:
//! the linker would find that one first, whatever the feature.)
//!
//! With feature `tls`, also writes what the firmware embeds for TLS into `OUT_DIR`:
//! `tls_ca.der` (the CA certificate of `IOTHUB_TLS_CA`, a PEM file), and, when both
//! `IOTHUB_TLS_CERT` and `IOTHUB_TLS_KEY` are set, `tls_client.der` (the client certificate)
//! and `tls_client.key` (the 32-byte scalar of its P-256 key, PKCS#8 PEM) with the cfg
//! `tls_client`. Without `IOTHUB_TLS_CA` the CA is empty and every handshake fails (a warning
//! says so), so that clippy and size builds need no certificates.
use std::{env, fs, path::PathBuf};

use p256::pkcs8::DecodePrivateKey as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let layout = if env::var_os("CARGO_FEATURE_QEMU_MPS2").is_some() {
        "memory/qemu-mps2.x"
    } else {
        "memory/stm32f429zi.x"
    };
    fs::copy(layout, out.join("memory.x")).expect("copy the memory layout");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory");
    println!("cargo::rustc-check-cfg=cfg(tls_client)");
    if env::var_os("CARGO_FEATURE_TLS").is_some() {
        tls_files(&out);
    }
}

fn tls_files(out: &std::path::Path) {
    for var in ["IOTHUB_TLS_CA", "IOTHUB_TLS_CERT", "IOTHUB_TLS_KEY"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let path = |var: &str| {
        env::var_os(var).map(|p| {
            let p = PathBuf::from(p);
            println!("cargo:rerun-if-changed={}", p.display());
            p
        })
    };
    let cert = |p: &std::path::Path| -> Vec<u8> {
        CertificateDer::from_pem_file(p)
            .unwrap_or_else(|e| panic!("{}: not a PEM certificate: {e}", p.display()))
            .to_vec()
    };
    let ca = match path("IOTHUB_TLS_CA") {
        Some(p) => cert(&p),
        None => {
            println!(
                "cargo:warning=feature tls without IOTHUB_TLS_CA: no CA embedded, every TLS handshake will fail"
            );
            Vec::new()
        }
    };
    fs::write(out.join("tls_ca.der"), ca).expect("write tls_ca.der");
    let (client_der, client_key) = match (path("IOTHUB_TLS_CERT"), path("IOTHUB_TLS_KEY")) {
        (Some(c), Some(k)) => {
            let der = PrivatePkcs8KeyDer::from_pem_file(&k)
                .unwrap_or_else(|e| panic!("{}: not a PKCS#8 PEM key: {e}", k.display()));
            let key = p256::SecretKey::from_pkcs8_der(der.secret_pkcs8_der())
                .unwrap_or_else(|e| panic!("{}: not a P-256 key: {e}", k.display()));
            println!("cargo:rustc-cfg=tls_client");
            (cert(&c), key.to_bytes().to_vec())
        }
        (None, None) => (Vec::new(), vec![0; 32]),
        _ => panic!("IOTHUB_TLS_CERT and IOTHUB_TLS_KEY go together"),
    };
    fs::write(out.join("tls_client.der"), client_der).expect("write tls_client.der");
    fs::write(out.join("tls_client.key"), client_key).expect("write tls_client.key");
}
