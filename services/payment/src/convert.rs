//! Proto → domain for every `PaymentService` request: the validation the handlers run before
//! any database work, as plain functions so fuzz targets and property tests run exactly this
//! code.
//!
//! Each function answers a valid request with what the handler works on, and anything else
//! with INVALID_ARGUMENT listing every bad field as a `google.rpc.BadRequest` violation.

use shopmesh::api::payment::v1::{
    ChargeRequest, GetPaymentRequest, ListPaymentsRequest, RefundRequest as RefundProto,
};
use shopmesh::mesh::validation::{self, Page, Violations};
use tonic::Status;

use crate::domain::{NewCharge, RefundRequest};
use crate::error::Error;

fn invalid(v: Violations) -> Status {
    Error::from(v).into()
}

/// The charge a Charge asks for.
pub fn charge(req: &ChargeRequest) -> Result<NewCharge, Status> {
    let amount = req.amount.as_ref().map(|m| (m.amount_minor, m.currency_code.as_str()));
    NewCharge::parse(&req.order_id, &req.user_id, amount, &req.request_id).map_err(invalid)
}

/// The id a GetPayment names.
pub fn get_payment(req: &GetPaymentRequest) -> Result<String, Status> {
    let mut v = Violations::new();
    validation::id(&mut v, "id", &req.id);
    v.check(req.id.clone()).map_err(invalid)
}

/// The refund a Refund asks for.
pub fn refund(req: &RefundProto) -> Result<RefundRequest, Status> {
    RefundRequest::parse(&req.payment_id, &req.request_id).map_err(invalid)
}

/// The order whose payments a ListPayments asks for, and the page.
pub fn list_payments(req: &ListPaymentsRequest) -> Result<(String, Page), Status> {
    let mut v = Violations::new();
    validation::id(&mut v, "order_id", &req.order_id);
    let page = validation::page(&mut v, req.page_size, &req.page_token);
    v.check((req.order_id.clone(), page)).map_err(invalid)
}

