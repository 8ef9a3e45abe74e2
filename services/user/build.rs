//! Builds this crate again when a migration is added or removed. `sqlx::migrate!` embeds the
//! files of `migrations/` it finds and tells the compiler of each (so an edited one is picked
//! up), but on stable Rust not of the directory: without this, a new migration would be missing
//! from the binary until something else in the crate changed (sqlx's `migrate build-script`).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
