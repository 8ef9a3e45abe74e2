//! The shopmesh SDK: the generated gRPC API of the shopmesh services, and the mesh
//! runtime every service joins with.
//!
//! - [`api`]: the `shopmesh-api` crate, re-exported: messages, clients and servers generated
//!   from `proto/` by `build.rs`, the descriptor set that server reflection serves, and the
//!   per-method call policy read from the protos. A service that only calls the mesh depends on
//!   `shopmesh-api` alone.
//! - [`mesh`]: what a service needs to join the mesh, in wings: `grpc` (the wire), `server`
//!   and `client` (the two stacks, whose layer order each module's docs give), `security`,
//!   `telemetry`; and the handler's kit (configuration, deadline, database, validation,
//!   statuses, ids, health, shutdown).
//!
//! A service crate (`services/<svc>`) is a library implementing
//! [`mesh::service::MeshService`]; the `shopmesh` binary (`cli/`) runs one or all of them with
//! [`mesh::server::run`] over one [`mesh::service::Mesh`] built with [`mesh_api`].

pub use shopmesh_api as api;
pub mod mesh;

/// The shopmesh API as the mesh runtime takes it: the method catalogue and the descriptor set
/// generated from `proto/`.
pub fn mesh_api() -> mesh::service::Api {
    mesh::service::Api {
        catalogue: mesh::grpc::catalogue::Catalogue::new(api::CALL_POLICY),
        file_descriptor_set: api::FILE_DESCRIPTOR_SET,
    }
}
