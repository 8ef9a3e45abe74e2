//! Proto → domain for every `OrderService` request: the validation the handlers run before any
//! database work or upstream call, as plain functions so fuzz targets and property tests run
//! exactly this code.
//!
//! Each function answers a valid request with what the handler works on, and anything else
//! with INVALID_ARGUMENT listing every bad field as a `google.rpc.BadRequest` violation.

use shopmesh::api::order::v1::{CancelOrderRequest, CreateOrderRequest, GetOrderRequest, ListOrdersRequest};
use shopmesh::mesh::validation::{self, Page, Violations};
use tonic::Status;

use crate::domain::{LineInput, NewOrder};
use crate::error::Error;

fn invalid(v: Violations) -> Status {
    Error::from(v).into()
}

/// The order a CreateOrder asks for.
pub fn create_order(req: &CreateOrderRequest) -> Result<NewOrder, Status> {
    let lines: Vec<LineInput<'_>> = req
        .line_items
        .iter()
        .map(|l| LineInput {
            sku: &l.sku,
            quantity: i64::from(l.quantity),
            unit_price: l.unit_price.as_ref().map(|m| (m.amount_minor, m.currency_code.as_str())),
        })
        .collect();
    NewOrder::parse(&req.user_id, &lines, &req.request_id).map_err(invalid)
}

/// The id a GetOrder names.
pub fn get_order(req: &GetOrderRequest) -> Result<String, Status> {
    let mut v = Violations::new();
    validation::id(&mut v, "id", &req.id);
    v.check(req.id.clone()).map_err(invalid)
}

/// The user whose orders a ListOrders asks for, and the page.
pub fn list_orders(req: &ListOrdersRequest) -> Result<(String, Page), Status> {
    let mut v = Violations::new();
    validation::id(&mut v, "user_id", &req.user_id);
    let page = validation::page(&mut v, req.page_size, &req.page_token);
    v.check((req.user_id.clone(), page)).map_err(invalid)
}

/// The order a CancelOrder names, and its idempotency key if it sent one.
pub fn cancel_order(req: &CancelOrderRequest) -> Result<(String, Option<String>), Status> {
    let mut v = Violations::new();
    validation::id(&mut v, "id", &req.id);
    let request_id = validation::request_id(&mut v, "request_id", &req.request_id, false);
    v.check((req.id.clone(), request_id)).map_err(invalid)
}

