//! Hostile input (feature `testing`): proptest strategies for the fields of request messages,
//! and the check that every answer to untrusted input must pass, shared by the services'
//! property tests and the fuzz targets in `fuzz/`.
//!
//! Every strategy mostly yields what an attacker or a broken client would send (arbitrary
//! Unicode, control characters, huge and empty values, extreme integers, values one step from
//! valid) and sometimes a valid value, so that checks after the first one are reached too.

use proptest::prelude::*;
use tonic::{Code, Status};

use crate::mesh::status::{MAX_METADATA_BYTES, metadata_bytes};

/// Why `outcome` is not an acceptable answer to untrusted input, or `None` if it is: success,
/// or INVALID_ARGUMENT with at least one `google.rpc.BadRequest` field violation whose metadata
/// fits [`MAX_METADATA_BYTES`]. Anything else is a finding.
pub fn unacceptable<T>(outcome: &Result<T, Status>) -> Option<String> {
    let status = outcome.as_ref().err()?;
    if status.code() != Code::InvalidArgument {
        return Some(format!("answered {:?}, not INVALID_ARGUMENT: {}", status.code(), status.message()));
    }
    if crate::mesh::testing::field_violations(status).is_empty() {
        return Some(format!("INVALID_ARGUMENT without field violations: {}", status.message()));
    }
    let bytes = metadata_bytes(status);
    if bytes > MAX_METADATA_BYTES {
        return Some(format!("INVALID_ARGUMENT takes {bytes} bytes of metadata, over {MAX_METADATA_BYTES}"));
    }
    None
}

/// A string a client could send: usually arbitrary Unicode, sometimes empty, control
/// characters, just past a length limit, huge, or a valid id or key in the wrong place.
pub fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => any::<String>(),
        1 => Just(String::new()),
        1 => "[\\x00-\\x1f\\x7f \\t\\u{85}\\u{a0}\\u{2028}\\u{feff}]{1,8}",
        1 => "[a-zA-Z0-9@._:-]{60,300}",
        1 => (any::<char>(), 0usize..70_000).prop_map(|(c, n)| c.to_string().repeat(n)),
        1 => valid_id(),
        1 => valid_id().prop_map(|id| id.to_uppercase()),
        1 => valid_request_id(),
    ]
    .boxed()
}

/// Either a value from `valid` or a hostile string, about evenly.
pub fn or_text(valid: impl Strategy<Value = String> + 'static) -> BoxedStrategy<String> {
    prop_oneof![valid, text()].boxed()
}

/// An id this mesh could have issued: any UUID in canonical lower-case form.
pub fn valid_id() -> BoxedStrategy<String> {
    any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()).boxed()
}

/// A valid idempotency key (AIP-155): 1 to 64 of letters, digits and `-_.:`.
pub fn valid_request_id() -> BoxedStrategy<String> {
    "[A-Za-z0-9_.:-]{1,64}".boxed()
}

/// An ISO 4217-shaped currency code.
pub fn valid_currency() -> BoxedStrategy<String> {
    "[A-Z]{3}".boxed()
}

/// An `int32` with its edges (minimum, -1, 0, 1, maximum) weighted up.
pub fn int32() -> BoxedStrategy<i32> {
    prop_oneof![
        2 => any::<i32>(),
        1 => prop_oneof![Just(i32::MIN), Just(-1), Just(0), Just(1), Just(i32::MAX)],
        1 => -3i32..=1003,
    ]
    .boxed()
}

/// An `int64` with its edges (minimum, -1, 0, 1, maximum) weighted up.
pub fn int64() -> BoxedStrategy<i64> {
    prop_oneof![
        2 => any::<i64>(),
        1 => prop_oneof![Just(i64::MIN), Just(-1), Just(0), Just(1), Just(i64::MAX)],
        1 => -3i64..=1_000_000,
    ]
    .boxed()
}

/// Arbitrary bytes to decode as a request: random, or a valid encoding with random bytes
/// appended (unknown fields, repeated fields, truncated varints).
pub fn bytes(valid_encoding: impl Strategy<Value = Vec<u8>> + 'static) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (valid_encoding, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(mut a, b)| {
            a.extend(b);
            a
        }),
    ]
    .boxed()
}
