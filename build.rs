//! The build script of the `shopmesh-api` crate (`api/build.rs` links here, as `api/proto` links
//! to `proto/`): compiles every `.proto` under `proto/` with protox (no system `protoc`),
//! generates the tonic clients and servers (each behind its crate feature), writes the
//! descriptor set that server reflection serves, and writes the per-method call policy
//! (`idempotency_level`) that the client stack reads.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use prost::Message as _;
use prost_types::method_options::IdempotencyLevel;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("src");
    println!("cargo:rustc-env=SHOPMESH_API_GENERATED={}", relative(&src, &out_dir).display());
    let mut protos = Vec::new();
    find_protos(Path::new("proto"), &mut protos)?;
    protos.sort();
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(&protos, ["proto"])?;
    std::fs::write(out_dir.join("shopmesh_descriptor.bin"), fds.encode_to_vec())?;
    std::fs::write(out_dir.join("call_policy.rs"), call_policy(&fds))?;

    // Clients and servers each behind their crate feature, so a caller builds only what it uses.
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .client_mod_attribute(".", r#"#[cfg(feature = "client")]"#)
        .server_mod_attribute(".", r#"#[cfg(feature = "server")]"#)
        .compile_fds(fds)?;
    Ok(())
}

/// `to` as seen from `from` (both absolute), or `to` itself when they share no root (another
/// drive). `include!` takes a relative path from the including file's directory, and the file
/// names in the generated code's panic locations are then the checkout's relative ones, not
/// this machine's absolute path.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (from, to): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return to.iter().collect();
    }
    let mut path: PathBuf = from[common..].iter().map(|_| "..").collect();
    path.extend(&to[common..]);
    path
}

fn find_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            find_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

/// One `(path, CallPolicy)` row per RPC, sorted by path so lookups can binary-search: the
/// method's `idempotency_level`, and the field number of its input's `request_id`, if any.
fn call_policy(fds: &prost_types::FileDescriptorSet) -> String {
    let request_id_fields: std::collections::HashMap<String, i32> = fds
        .file
        .iter()
        .flat_map(|f| {
            f.message_type.iter().filter_map(move |m| {
                let field = m.field.iter().find(|fd| fd.name() == "request_id")?;
                Some((format!(".{}.{}", f.package(), m.name()), field.number()))
            })
        })
        .collect();
    let mut rows = Vec::new();
    for file in fds.file.iter().filter(|f| f.package().starts_with("shopmesh.")) {
        for service in &file.service {
            for method in &service.method {
                let level = method
                    .options
                    .as_ref()
                    .map_or(IdempotencyLevel::IdempotencyUnknown, |o| o.idempotency_level());
                let variant = match level {
                    IdempotencyLevel::NoSideEffects => "NoSideEffects",
                    IdempotencyLevel::Idempotent => "Idempotent",
                    IdempotencyLevel::IdempotencyUnknown => "Unknown",
                };
                let request_id = request_id_fields
                    .get(method.input_type())
                    .map_or_else(|| "None".to_owned(), |n| format!("Some({n})"));
                rows.push((
                    format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    variant,
                    request_id,
                ));
            }
        }
    }
    rows.sort();
    let mut src = String::from(
        "/// Every RPC of the shopmesh API with the `idempotency_level` its proto declares.\n\
         pub static CALL_POLICY: &[(&str, CallPolicy)] = &[\n",
    );
    for (path, variant, request_id) in rows {
        let _ = writeln!(
            src,
            "    ({path:?}, CallPolicy {{ idempotency: Idempotency::{variant}, request_id_field: {request_id} }}),"
        );
    }
    src.push_str("];\n");
    src
}
