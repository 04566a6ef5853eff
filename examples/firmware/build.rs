//! Puts the board's memory layout where cortex-m-rt's link.x finds it as `memory.x`: the
//! STM32F429ZI's (`memory/stm32f429zi.x`) by default, QEMU mps2-an386's
//! (`memory/qemu-mps2.x`) with the `qemu-mps2` feature. (No `memory.x` in the package root:
//! the linker would find that one first, whatever the feature.)
use std::{env, fs, path::PathBuf};

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
}
