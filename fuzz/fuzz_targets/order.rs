//! OrderService: the first byte picks the request message, the rest is its protobuf encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shopmesh::api::order::v1::{CancelOrderRequest, CreateOrderRequest, GetOrderRequest, ListOrdersRequest};
use shopmesh_fuzz::check;
use shopmesh_order::convert;

fuzz_target!(|data: &[u8]| {
    let Some((&method, body)) = data.split_first() else { return };
    match method % 4 {
        0 => check::<CreateOrderRequest, _>(body, convert::create_order),
        1 => check::<GetOrderRequest, _>(body, convert::get_order),
        2 => check::<ListOrdersRequest, _>(body, convert::list_orders),
        _ => check::<CancelOrderRequest, _>(body, convert::cancel_order),
    }
});
