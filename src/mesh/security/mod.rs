//! Who may connect and call.
//!
//! - [`config`]: the wing's settings (mutual TLS, the policy, bearer tokens).
//! - [`tls`]: the mesh's mutual TLS configuration, reloaded as certificates rotate, and the
//!   verifiers that check a peer's SPIFFE ID.
//! - [`incoming`]: the server's accept loop with TLS handshakes; [`connect`]: outgoing TLS
//!   connections.
//! - [`authz`]: the per-method authorization policy (a server layer).
//! - [`bearer`]: bearer tokens (JWT) for callers outside the mesh (a server layer).
//! - [`certificates`]: a CA that issues workload certificates: the development CA, and the
//!   in-pod issuer behind the Helm chart's own mesh CA.
//!
//! SPIFFE IDs and the caller's identity live below the wings, in
//! [`crate::mesh::identity`] (telemetry reads them too), as does the
//! [`crate::mesh::throttle`] of refusal log lines.

pub mod authz;
pub mod bearer;
pub mod certificates;
pub mod config;
pub mod connect;
pub mod incoming;
pub mod tls;
