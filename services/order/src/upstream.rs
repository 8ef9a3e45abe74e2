//! The order service's calls to its dependencies, through the generated clients over the
//! mesh's client stack (which gives each call its deadline and retries); answers are reduced to
//! what the order flow needs.

use shopmesh::api::common::v1::Money;
use shopmesh::api::payment::v1::{
    ChargeRequest, PaymentState, RefundRequest, payment_service_client::PaymentServiceClient,
};
use shopmesh::api::user::v1::{GetUserRequest, user_service_client::UserServiceClient};
use shopmesh::mesh::client::Channel;
use tonic::{Code, Status};

use crate::domain::Order;

/// What the user service says about an orderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserCheck {
    /// Exists and may order.
    Active,
    /// Exists but is deactivated.
    Inactive,
    /// No such user.
    Missing,
}

/// What the payment service answered to a Charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charged {
    /// Captured, by this payment.
    Succeeded(String),
    /// Declined, by this payment, for this reason.
    Declined(String, String),
    /// Recorded but not decided yet (another Charge with this key is in flight).
    Processing,
}

/// Clients of the user and payment services.
#[derive(Debug, Clone)]
pub struct Upstream {
    users: UserServiceClient<Channel>,
    payments: PaymentServiceClient<Channel>,
}

impl Upstream {
    /// Clients over the given channels.
    pub fn new(users: Channel, payments: Channel) -> Self {
        Self { users: UserServiceClient::new(users), payments: PaymentServiceClient::new(payments) }
    }

    /// Whether `user_id` may order.
    pub async fn check_user(&self, user_id: &str) -> Result<UserCheck, Status> {
        let request = GetUserRequest { id: user_id.to_owned() };
        match self.users.clone().get_user(request).await {
            Ok(reply) if reply.get_ref().active => Ok(UserCheck::Active),
            Ok(_) => Ok(UserCheck::Inactive),
            Err(status) if status.code() == Code::NotFound => Ok(UserCheck::Missing),
            Err(status) => Err(status),
        }
    }

    /// Charges `order`'s total with the order id as the idempotency key.
    pub async fn charge(&self, order: &Order) -> Result<Charged, Status> {
        let request = ChargeRequest {
            order_id: order.id.clone(),
            user_id: order.user_id.clone(),
            amount: Some(Money {
                currency_code: order.currency_code.clone(),
                amount_minor: order.total_minor,
            }),
            request_id: order.id.clone(),
        };
        let payment = self.payments.clone().charge(request).await?.into_inner();
        Ok(match payment.state() {
            // A REFUNDED payment was a success that a cancel already undid.
            PaymentState::Succeeded | PaymentState::Refunded => Charged::Succeeded(payment.id),
            PaymentState::Declined => Charged::Declined(payment.id, payment.decline_reason),
            PaymentState::Processing | PaymentState::Unspecified => Charged::Processing,
        })
    }

    /// Refunds `payment_id` with the order id as the idempotency key, so every CancelOrder of
    /// one order lands on the same refund.
    pub async fn refund(&self, order_id: &str, payment_id: &str) -> Result<(), Status> {
        let request = RefundRequest { payment_id: payment_id.to_owned(), request_id: order_id.to_owned() };
        self.payments.clone().refund(request).await.map(drop)
    }
}
