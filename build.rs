//! Builds `hotpool-init` (`src/init/main.rs`) as a static binary for the
//! target, so the Docker driver can embed it and install it at start: it must
//! run inside images `FROM scratch`, with no libc of theirs.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "src/init/main.rs";
    println!("cargo::rerun-if-changed={source}");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let status = Command::new(rustc)
        .args(["--edition", "2024", "--crate-name", "hotpool_init"])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static", "--target", &target])
        .arg("-o")
        .arg(out.join("hotpool-init"))
        .arg(source)
        // The flags of this build are not the init's: it is always static.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("run rustc for hotpool-init");
    assert!(status.success(), "building hotpool-init failed");
}
