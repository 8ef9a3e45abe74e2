//! What a service needs to join the mesh, in wings (a folder each; its `mod.rs` says what it
//! holds), with the handler's kit at the top.
//!
//! Wings:
//! - [`grpc`]: what every layer shares about the wire: the one response future of a layer that
//!   answers at once, the one place refusals become statuses, status headers, the
//!   `grpc-timeout` codec, and the method catalogue.
//! - [`server`]: [`server::run`] and [`server::serve`], and the server layers, in the order
//!   written once in its module docs.
//! - [`client`]: [`client::channel`] and the client layers (deadline, retry, balance), in the
//!   order written once in its module docs.
//! - [`security`]: mutual TLS (incoming handshakes, outgoing connections), the authorization
//!   policy, bearer tokens, development certificates.
//! - [`telemetry`]: logs, traces and metrics set up once per process, and the observe layers.
//! - [`events`]: the transactional outbox and its relay, the broker (NATS JetStream or the
//!   all-in-one's in-process bus), consumers that act once (inbox), dead letters.
//!
//! Each wing owns its settings (its `config.rs`); [`config`] flattens them for clap. Below the
//! wings, shared by more than one: [`identity`] (SPIFFE IDs, the caller's identity) and
//! [`throttle`] (log lines a peer can cause, limited).
//!
//! The handler's kit: [`service`] (the [`Mesh`](service::Mesh) value and the
//! [`MeshService`](service::MeshService) trait every service implements, its one door),
//! [`upstream`] (the services a service calls, as data), [`request_deadline`] (the handled request's deadline), [`db`],
//! [`validation`] (request checks and the one [`Page`](validation::Page) type), [`status`],
//! [`ids`], [`health`], [`shutdown`], [`error`]; and, with the `testing` feature, `testing`
//! and `hostile` for tests.

pub mod client;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod grpc;
pub mod health;
#[cfg(feature = "testing")]
pub mod hostile;
pub mod identity;
pub mod ids;
pub mod request_deadline;
pub mod security;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod throttle;
pub mod upstream;
pub mod validation;

#[cfg(feature = "testing")]
pub mod testing;

pub use error::Error;
