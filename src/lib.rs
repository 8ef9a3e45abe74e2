//! The shopmesh SDK: the generated gRPC API of the user, order and payment services, and the mesh
//! runtime every service joins with.
//!
//! - [`api`]: messages, clients and servers generated from `proto/` by `build.rs`, the descriptor
//!   set that server reflection serves, and the per-method call policy read from the protos.
//! - [`mesh`]: what a service needs to join the mesh: typed configuration, server bootstrap
//!   (health, reflection, graceful shutdown), client channels with deadlines, database pools with
//!   embedded migrations, request validation and ids.
//!
//! A service crate (`services/<svc>`) is a library with `run(config, listener, shutdown)`; the
//! `shopmesh` binary (`cli/`) runs one or all of them.

pub mod api;
pub mod mesh;
