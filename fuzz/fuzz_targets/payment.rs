//! PaymentService: the first byte picks the request message, the rest is its protobuf encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shopmesh::api::payment::v1::{ChargeRequest, GetPaymentRequest, ListPaymentsRequest, RefundRequest};
use shopmesh_fuzz::check;
use shopmesh_payment::convert;

fuzz_target!(|data: &[u8]| {
    let Some((&method, body)) = data.split_first() else { return };
    match method % 4 {
        0 => check::<ChargeRequest, _>(body, convert::charge),
        1 => check::<GetPaymentRequest, _>(body, convert::get_payment),
        2 => check::<RefundRequest, _>(body, convert::refund),
        _ => check::<ListPaymentsRequest, _>(body, convert::list_payments),
    }
});
