//! The generated `OrderService` trait's implementation: proto in, use case, proto out.

use shopmesh::api::common::v1::Money;
use shopmesh::api::order::v1::{
    CancelOrderRequest, CreateOrderRequest, Fulfilment as FulfilmentProto, GetOrderRequest,
    LineItem as LineItemProto, ListOrdersRequest, ListOrdersResponse, Order as OrderProto, OrderState,
    order_service_server::OrderService,
};
use shopmesh::mesh::identity::Principal;
use shopmesh::mesh::ids;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::domain::{Fulfilment, Order, State};
use crate::error::Error;
use crate::service::Orders;

/// The order service's gRPC API.
#[derive(Debug, Clone)]
pub struct OrderApi {
    orders: Orders,
}

impl OrderApi {
    /// The API over the use cases.
    pub fn new(orders: Orders) -> Self {
        Self { orders }
    }
}

fn to_proto(o: Order) -> OrderProto {
    let state = match o.state {
        State::PendingPayment => OrderState::PendingPayment,
        State::Paid => OrderState::Paid,
        State::PaymentDeclined => OrderState::PaymentDeclined,
        State::Cancelled => OrderState::Cancelled,
    };
    let line_items = o
        .items
        .into_iter()
        .map(|i| LineItemProto {
            sku: i.sku,
            // Stored quantities passed validation (1..=10000), so they fit in i32.
            quantity: i32::try_from(i.quantity).unwrap_or(i32::MAX),
            unit_price: Some(Money {
                currency_code: o.currency_code.clone(),
                amount_minor: i.unit_price_minor,
            }),
        })
        .collect();
    OrderProto {
        id: o.id,
        user_id: o.user_id,
        line_items,
        total: Some(Money { currency_code: o.currency_code, amount_minor: o.total_minor }),
        state: state.into(),
        payment_id: o.payment_id.unwrap_or_default(),
        decline_reason: o.decline_reason.unwrap_or_default(),
        request_id: o.request_id.unwrap_or_default(),
        create_time: Some(ids::timestamp(o.create_time_ms)),
        update_time: Some(ids::timestamp(o.update_time_ms)),
        fulfilment: match o.fulfilment {
            None => FulfilmentProto::Unspecified,
            Some(Fulfilment::Allocated) => FulfilmentProto::Allocated,
            Some(Fulfilment::Backordered) => FulfilmentProto::Backordered,
            Some(Fulfilment::Released) => FulfilmentProto::Released,
        }
        .into(),
    }
}

/// Denies an end user acting for any user but itself, before anything is looked up. `scope` is
/// the call's [`Principal::scope`]: an end user's subject, or `None` for the mesh's own calls.
fn as_self(scope: Option<&str>, user_id: &str) -> Result<(), Error> {
    match scope {
        Some(sub) if sub != user_id => Err(Error::PermissionDenied),
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn create_order(&self, req: Request<CreateOrderRequest>) -> Result<Response<OrderProto>, Status> {
        // Whose order it is decides first (AIP-211), before the request is even validated.
        as_self(Principal::of_call(&req).scope().map_err(Error::from)?, &req.get_ref().user_id)?;
        let new = convert::create_order(req.get_ref())?;
        Ok(Response::new(to_proto(self.orders.create(&new).await?)))
    }

    async fn get_order(&self, req: Request<GetOrderRequest>) -> Result<Response<OrderProto>, Status> {
        let owner = Principal::of_call(&req).scope().map_err(Error::from)?;
        let id = convert::get_order(req.get_ref())?;
        Ok(Response::new(to_proto(self.orders.get(&id, owner).await?)))
    }

    async fn list_orders(
        &self,
        req: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        as_self(Principal::of_call(&req).scope().map_err(Error::from)?, &req.get_ref().user_id)?;
        let (user_id, page) = convert::list_orders(req.get_ref())?;
        let orders = self.orders.list(&user_id, &page).await?;
        Ok(Response::new(ListOrdersResponse {
            orders: orders.items.into_iter().map(to_proto).collect(),
            next_page_token: orders.next_page_token,
        }))
    }

    async fn cancel_order(&self, req: Request<CancelOrderRequest>) -> Result<Response<OrderProto>, Status> {
        let owner = Principal::of_call(&req).scope().map_err(Error::from)?;
        let (id, request_id) = convert::cancel_order(req.get_ref())?;
        Ok(Response::new(to_proto(self.orders.cancel(&id, request_id.as_deref(), owner).await?)))
    }
}
