//! What a service needs to join the mesh, one concern per module.
//!
//! A service builds its tonic routes and hands them to [`server::serve`], which adds health and
//! reflection and serves until shutdown. Outgoing calls go through channels from
//! [`client::channel`]. Its data lives in the database opened by [`db::open`], migrated before
//! the first request.
//!
//! With mutual TLS on, [`tls_incoming`] accepts connections and runs each handshake (the peer's
//! certificate checked by [`tls`]) before tonic sees the connection; outgoing connections use
//! [`tls_connect`].
//!
//! Server layers, outermost first: tonic's HTTP/2 server (stream limit, keepalive, connection
//! age, header-list hard cap, reset-stream limits), [`peer`] (the mTLS peer's identity and
//! address as extensions), [`observe`] (span continuing the caller's trace, RED metrics),
//! [`authz`] (per-method policy: UNAUTHENTICATED, PERMISSION_DENIED), [`load_shed`] (bounded
//! concurrency, RESOURCE_EXHAUSTED at once), [`metadata_size`], [`readiness`], [`bearer`]
//! (bearer tokens → [`identity::Subject`]), [`rate_limit`] (per caller), [`deadline`] (the
//! caller's `grpc-timeout` becomes the handler's deadline), [`message_size`], the router
//! (health, reflection, the service).
//!
//! Client layers, outermost first: [`observe`] (span sent as `traceparent`, metrics),
//! [`deadline`] (remaining budget sent on), [`retry`]
//! (UNAVAILABLE on repeatable calls, within a budget), [`balance`] (p2c over every endpoint,
//! ejecting failing ones), one HTTP/2 connection per endpoint.

pub mod answer;
pub mod authz;
pub mod balance;
pub mod bearer;
pub mod client;
pub mod config;
pub mod db;
pub mod deadline;
pub mod dev_certs;
pub mod error;
pub mod health;
#[cfg(feature = "testing")]
pub mod hostile;
pub mod identity;
pub mod ids;
pub mod load_shed;
pub mod message_size;
pub mod metadata_size;
pub mod observe;
pub mod peer;
pub mod rate_limit;
pub mod readiness;
pub mod retry;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod tls_connect;
pub mod tls_incoming;
pub mod validation;

#[cfg(feature = "testing")]
pub mod testing;

pub use error::Error;
