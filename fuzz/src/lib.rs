//! What every fuzz target does with one input: decode it as a request message and hold the
//! service's conversion of it to the rule for answers to untrusted input.

use std::fmt::Debug;

use tonic::Status;

/// Decodes `body` as an `M` and converts it with `convert`, the service's own validation;
/// panics (a finding) unless the outcome is success or INVALID_ARGUMENT with field violations
/// that fit in gRPC metadata (`shopmesh::mesh::hostile::unacceptable`).
///
/// Bytes that are not an `M` stop here: tonic's codec rejects them before any service code
/// runs (with INTERNAL, as gRPC's status code table prescribes for an unparsable message).
pub fn check<M, T>(body: &[u8], convert: impl Fn(&M) -> Result<T, Status>)
where
    M: prost::Message + Default + Debug,
{
    let Ok(request) = M::decode(body) else { return };
    if let Some(finding) = shopmesh::mesh::hostile::unacceptable(&convert(&request)) {
        panic!("{finding}\nrequest: {request:?}");
    }
}
