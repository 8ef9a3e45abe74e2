//! What a service needs to join the mesh, one concern per module.
//!
//! A service builds its tonic routes and hands them to [`server::serve`], which adds health and
//! reflection and serves until shutdown. Outgoing calls go through channels from
//! [`client::channel`] with a deadline on every request ([`client::with_deadline`]). Its data lives
//! in the database opened by [`db::open`], migrated before the first request.
//!
//! Layers, outermost first, on the server: tonic's HTTP/2 server, the router (health, reflection,
//! the service). Issue-tracked additions (deadline propagation, retries, tracing, metrics) slot in
//! as tower layers in `server.rs` and `client.rs`.

pub mod client;
pub mod config;
pub mod db;
pub mod error;
pub mod health;
pub mod ids;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod validation;

#[cfg(feature = "testing")]
pub mod testing;

pub use error::Error;
