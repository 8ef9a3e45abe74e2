//! What every layer shares about the gRPC wire, on both sides of a call.
//!
//! - [`answer`]: the response future of a layer that hands a call on or answers it at once.
//! - [`respond`]: the one place where a layer's refusal or a transport failure becomes a gRPC
//!   status, sent as a trailers-only response.
//! - [`code`]: the status code of a response, read from its headers.
//! - [`timeout`]: the `grpc-timeout` header, parsed and encoded.
//! - [`catalogue`]: every method the mesh knows, by path: its service and method names,
//!   whether repeating it is safe, and whether it is infrastructure (health, reflection).

pub mod answer;
pub mod catalogue;
pub mod code;
pub mod respond;
pub mod timeout;
