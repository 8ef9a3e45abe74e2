//! docs/layout.md says what the code is: every module file of `src/`, `services/*/src/` and
//! `cli/src/` is named in it (by its path, or by its file name), and every `.rs` file it names
//! exists. A file added, moved or removed without its line in the map fails here. And every
//! service crate that embeds migrations has the build script that keeps them current.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file below `dir`, relative to the repository's root.
fn rust_files(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root()).expect("below the root");
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// The module files the map must name.
fn module_files() -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("cli/src"), &mut files);
    let services = std::fs::read_dir(root().join("services")).expect("services/");
    for service in services.flatten() {
        rust_files(&service.path().join("src"), &mut files);
    }
    files.sort();
    files
}

/// The `.rs` names in the map, with any path written before them.
fn named(layout: &str) -> BTreeSet<String> {
    layout
        .split(|c: char| !(c.is_ascii_alphanumeric() || "_-./<>".contains(c)))
        .map(|word| word.trim_start_matches("../").trim_end_matches('.'))
        .filter(|word| word.ends_with(".rs"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_layout_names_every_module_file_and_none_that_is_gone() {
    let layout = std::fs::read_to_string(root().join("docs/layout.md")).expect("docs/layout.md");
    let names = named(&layout);
    let files = module_files();
    let base = |path: &str| path.rsplit('/').next().unwrap_or(path).to_owned();

    let missing: Vec<&String> = files
        .iter()
        .filter(|file| {
            !names.contains(file.as_str())
                && !names.contains(&base(file))
                && !names.iter().any(|n| n.contains('/') && file.ends_with(n.as_str()))
        })
        .collect();
    assert!(missing.is_empty(), "docs/layout.md does not name these module files: {missing:?}");

    // Anything the map names must be there: a path as written (`<svc>` being any service), a
    // bare file name somewhere in the tree.
    let mut everywhere = files.clone();
    for dir in ["cli/tests", "cli/examples", "api", "bench", "fuzz"] {
        rust_files(&root().join(dir), &mut everywhere);
    }
    // Build scripts, beside their crate's Cargo.toml.
    let services = std::fs::read_dir(root().join("services")).expect("services/");
    let crates = services.flatten().map(|e| format!("services/{}", e.file_name().to_string_lossy()));
    for krate in ["cli".to_owned(), "api".to_owned()].into_iter().chain(crates) {
        if root().join(&krate).join("build.rs").exists() {
            everywhere.push(format!("{krate}/build.rs"));
        }
    }
    let exists = |name: &str| {
        if name.contains('/') {
            let services: Vec<String> = std::fs::read_dir(root().join("services"))
                .expect("services/")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if name.contains("<svc>") {
                return services
                    .iter()
                    .any(|s| everywhere.iter().any(|f| f.ends_with(&name.replace("<svc>", s))));
            }
            everywhere.iter().any(|f| f == name || f.ends_with(&format!("/{name}")))
        } else {
            everywhere.iter().any(|f| base(f) == name)
        }
    };
    let gone: Vec<&String> = names.iter().filter(|name| !exists(name)).collect();
    assert!(gone.is_empty(), "docs/layout.md names files that are not in the tree: {gone:?}");
}

/// `sqlx::migrate!` tells the compiler of each migration file it embeds but, on stable Rust,
/// not of the directory: a service crate without a build script asking Cargo to rerun on
/// `migrations/` keeps building binaries without a migration added to an already built crate.
#[test]
fn every_service_that_embeds_migrations_rebuilds_when_one_is_added() {
    let mut checked = 0;
    let mut missing = Vec::new();
    for service in std::fs::read_dir(root().join("services")).expect("services/").flatten() {
        let lib = std::fs::read_to_string(service.path().join("src/lib.rs")).unwrap_or_default();
        if !lib.contains("sqlx::migrate!") {
            continue;
        }
        checked += 1;
        let build = std::fs::read_to_string(service.path().join("build.rs")).unwrap_or_default();
        if !build.contains("cargo:rerun-if-changed=migrations") {
            missing.push(service.file_name().to_string_lossy().into_owned());
        }
    }
    assert!(checked >= 6, "found only {checked} services embedding migrations");
    assert!(missing.is_empty(), "no build.rs rerunning on migrations/ in services/{missing:?}");
}
