//! Lays out the release binary's code so that what its start runs sits together.
//!
//! `startup.order` lists the functions the all-in-one runs from exec until it is idle (every
//! service SERVING, its timers ticking, one metrics scrape), as `scripts/startup-order` records
//! them under valgrind. The linker places those first in `.text` (lld's
//! `--symbol-ordering-file`, as Chromium and Firefox order theirs); everything else keeps its
//! place after them.
//!
//! Why: the kernel maps an executable's code on first touch, a whole page-cache folio per fault
//! (64 KiB to 512 KiB here), so ~4 000 start functions spread over a 19 MiB `.text` kept 17 MiB
//! of it resident at idle. Together they fill about 4 MiB (docs/benchmarks.md, "Idle RSS: the
//! start's code placed together").
//!
//! Only for release builds for x86_64 Linux, and only when the linker takes the option: the
//! build script links an empty program with it first, with the same `rustc`, linker and flags
//! (rust-lld, Rust's default there since 1.90, and mold do; GNU ld, which Rust 1.88 and 1.89 and
//! some distributions' Rust use, does not). Otherwise, or with `SHOPMESH_NO_STARTUP_ORDER=1`, the
//! binary builds as before. Names the binary no longer has are skipped in silence: an old list
//! costs memory, never a build. Symbol names carry a hash of their crate's version and
//! dependencies, so after a version bump or a `Cargo.lock` update run `scripts/startup-order`
//! again (`scripts/bench-peers --only start` says how much of the list the binary still matches).
use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=startup.order");
    println!("cargo:rerun-if-env-changed=SHOPMESH_NO_STARTUP_ORDER");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("startup.order");
    if var("PROFILE") != "release"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || !var("SHOPMESH_NO_STARTUP_ORDER").is_empty()
        || !order.exists()
    {
        return;
    }
    let ordering = format!("-Wl,--symbol-ordering-file={}", order.display());
    if !links_with(&ordering) {
        println!(
            "cargo:warning=the linker does not take --symbol-ordering-file: the start's code keeps its default layout (more idle memory, nothing else)"
        );
        return;
    }
    println!("cargo:rustc-link-arg-bins={ordering}");
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// Whether an empty program links with `arg`, built as this crate's binary will be.
fn links_with(arg: &str) -> bool {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_default());
    let source = out.join("probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let mut rustc = Command::new(env::var("RUSTC").unwrap_or_else(|_| "rustc".into()));
    rustc
        .args(["--crate-type", "bin", "--crate-name", "startup_order_probe", "--target"])
        .arg(env::var("TARGET").unwrap_or_default())
        .arg("-o")
        .arg(out.join("startup_order_probe"))
        .arg(&source)
        .arg(format!("-Clink-arg={arg}"))
        .arg("-Clink-arg=-Wl,--no-warn-symbol-ordering");
    if let Ok(linker) = env::var("RUSTC_LINKER") {
        rustc.arg(format!("-Clinker={linker}"));
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    rustc.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    rustc.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}
