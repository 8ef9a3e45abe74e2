//! The generated `PaymentService` trait's implementation: proto in, use case, proto out.

use shopmesh::api::common::v1::Money;
use shopmesh::api::payment::v1::{
    ChargeRequest, GetPaymentRequest, ListPaymentsRequest, ListPaymentsResponse, Payment as PaymentProto,
    PaymentState, RefundRequest as RefundProto, payment_service_server::PaymentService,
};
use shopmesh::mesh::identity::Principal;
use shopmesh::mesh::ids;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::domain::{Payment, State};
use crate::error::Error;
use crate::service::Payments;

/// The payment service's gRPC API.
#[derive(Debug, Clone)]
pub struct PaymentApi {
    payments: Payments,
}

impl PaymentApi {
    /// The API over the use cases.
    pub fn new(payments: Payments) -> Self {
        Self { payments }
    }
}

fn to_proto(p: Payment) -> PaymentProto {
    let state = match p.state {
        State::Processing => PaymentState::Processing,
        // The money is still captured until the processor has returned it: a refund in flight
        // shows as SUCCEEDED, with no refund key yet.
        State::Succeeded | State::Refunding => PaymentState::Succeeded,
        State::Declined => PaymentState::Declined,
        State::Refunded => PaymentState::Refunded,
    };
    let refund_request_id = if p.state == State::Refunded { p.refund_request_id } else { None };
    PaymentProto {
        id: p.id,
        order_id: p.order_id,
        user_id: p.user_id,
        amount: Some(Money { currency_code: p.currency_code, amount_minor: p.amount_minor }),
        state: state.into(),
        decline_reason: p.decline_reason.unwrap_or_default(),
        request_id: p.request_id,
        refund_request_id: refund_request_id.unwrap_or_default(),
        create_time: Some(ids::timestamp(p.create_time_ms)),
        update_time: Some(ids::timestamp(p.update_time_ms)),
    }
}

/// Refuses calls that are not the mesh's own: an end user (a bearer-token caller) has no
/// business charging, refunding or reading payments directly (it reads its orders instead),
/// and a caller that proved nothing is UNAUTHENTICATED.
fn mesh_only<T>(req: &Request<T>) -> Result<(), Error> {
    match Principal::of_call(req).scope()? {
        None => Ok(()),
        Some(_) => Err(Error::PermissionDenied),
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn charge(&self, req: Request<ChargeRequest>) -> Result<Response<PaymentProto>, Status> {
        mesh_only(&req)?;
        let charge = convert::charge(req.get_ref())?;
        Ok(Response::new(to_proto(self.payments.charge(&charge).await?)))
    }

    async fn get_payment(&self, req: Request<GetPaymentRequest>) -> Result<Response<PaymentProto>, Status> {
        mesh_only(&req)?;
        let id = convert::get_payment(req.get_ref())?;
        match self.payments.get(&id).await? {
            Some(p) => Ok(Response::new(to_proto(p))),
            None => Err(Error::NotFound(id).into()),
        }
    }

    async fn refund(&self, req: Request<RefundProto>) -> Result<Response<PaymentProto>, Status> {
        mesh_only(&req)?;
        let refund = convert::refund(req.get_ref())?;
        Ok(Response::new(to_proto(self.payments.refund(&refund).await?)))
    }

    async fn list_payments(
        &self,
        req: Request<ListPaymentsRequest>,
    ) -> Result<Response<ListPaymentsResponse>, Status> {
        mesh_only(&req)?;
        let (order_id, page) = convert::list_payments(req.get_ref())?;
        let payments = self.payments.list(&order_id, &page).await?;
        Ok(Response::new(ListPaymentsResponse {
            payments: payments.items.into_iter().map(to_proto).collect(),
            next_page_token: payments.next_page_token,
        }))
    }
}
