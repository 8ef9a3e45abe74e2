//! CatalogService: the first byte picks the request message, the rest is its protobuf encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shopmesh::api::catalog::v1::{
    BatchGetProductsRequest, CreateProductRequest, GetProductRequest, ListProductsRequest,
    UpdateProductRequest,
};
use shopmesh_catalog::convert;
use shopmesh_fuzz::check;

fuzz_target!(|data: &[u8]| {
    let Some((&method, body)) = data.split_first() else { return };
    match method % 5 {
        0 => check::<CreateProductRequest, _>(body, convert::create_product),
        1 => check::<GetProductRequest, _>(body, convert::get_product),
        2 => check::<ListProductsRequest, _>(body, convert::list_products),
        3 => check::<UpdateProductRequest, _>(body, convert::update_product),
        _ => check::<BatchGetProductsRequest, _>(body, convert::batch_get_products),
    }
});
