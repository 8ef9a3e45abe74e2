//! Who may connect and call.
//!
//! - [`identity`]: SPIFFE IDs, and the caller's identity and token subject as request
//!   extensions.
//! - [`tls`]: the mesh's mutual TLS configuration, reloaded as certificates rotate, and the
//!   verifiers that check a peer's SPIFFE ID.
//! - [`incoming`]: the server's accept loop with TLS handshakes; [`connect`]: outgoing TLS
//!   connections.
//! - [`authz`]: the per-method authorization policy (a server layer).
//! - [`bearer`]: bearer tokens (JWT) for callers outside the mesh (a server layer).
//! - [`dev_certs`]: a development CA and certificates.

pub mod authz;
pub mod bearer;
pub mod connect;
pub mod dev_certs;
pub mod identity;
pub mod incoming;
pub mod tls;
