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
//! Only for release builds for x86_64 Linux with Rust's default linker there (rust-lld since
//! Rust 1.90). Any other target or a linker of one's own (`-C linker`, `*_LINKER`) builds as
//! before, as does `SHOPMESH_NO_STARTUP_ORDER=1`. Names the binary no longer has are skipped
//! in silence: an old list costs memory, never a build. Symbol names carry a hash of their
//! crate's version and dependencies, so after a version bump or a `Cargo.lock` update run
//! `scripts/startup-order` again (`scripts/bench-peers --only start` says how much of the list
//! the binary still matches).
use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=startup.order");
    println!("cargo:rerun-if-env-changed=SHOPMESH_NO_STARTUP_ORDER");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let own_linker = !var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
        || var("CARGO_ENCODED_RUSTFLAGS").split('\x1f').any(|f| f.contains("linker"));
    if var("PROFILE") != "release"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || own_linker
        || !var("SHOPMESH_NO_STARTUP_ORDER").is_empty()
    {
        return;
    }
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("startup.order");
    if !order.exists() {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", order.display());
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}
