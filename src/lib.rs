//! The shopmesh SDK: the generated gRPC API of the user, order and payment services, and the mesh
//! runtime every service joins with.
//!
//! - [`api`]: messages, clients and servers generated from `proto/` by `build.rs`, the descriptor
//!   set that server reflection serves, and the per-method call policy read from the protos.
//! - [`mesh`]: what a service needs to join the mesh: typed configuration; the server stack
//!   (peer identity, observe, authorization, load shedding, metadata size, readiness gate,
//!   bearer tokens, per-caller rate limit, deadline, message size; health, reflection, drain;
//!   mutual TLS at the accept loop) and the client stack (observe, deadline, retry with a
//!   budget, p2c balancing over resolved endpoints, mutual TLS per connection), in that order,
//!   outermost first; telemetry (logs, OTLP traces,
//!   Prometheus metrics); database pools with embedded migrations and traced statements;
//!   request validation and ids.
//!
//! A service crate (`services/<svc>`) is a library with `run(config, listener, shutdown)`; the
//! `shopmesh` binary (`cli/`) runs one or all of them.

pub mod api;
pub mod mesh;
