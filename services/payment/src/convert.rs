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

#[cfg(test)]
mod tests {
    //! Property tests: arbitrary requests and arbitrary bytes are either converted or rejected
    //! with INVALID_ARGUMENT and field violations, never a panic; valid requests convert.

    use super::*;
    use proptest::prelude::*;
    use prost::Message as _;
    use shopmesh::api::common::v1::Money;
    use shopmesh::mesh::hostile::{self, int32, int64, or_text, valid_currency, valid_id, valid_request_id};

    fn check<T>(outcome: &Result<T, Status>) -> Result<(), TestCaseError> {
        match hostile::unacceptable(outcome) {
            None => Ok(()),
            Some(finding) => Err(TestCaseError::fail(finding)),
        }
    }

    fn charge_request() -> impl Strategy<Value = ChargeRequest> {
        let money = (or_text(valid_currency()), int64())
            .prop_map(|(currency_code, amount_minor)| Money { currency_code, amount_minor });
        (or_text(valid_id()), or_text(valid_id()), proptest::option::of(money), or_text(valid_request_id()))
            .prop_map(|(order_id, user_id, amount, request_id)| ChargeRequest {
                order_id,
                user_id,
                amount,
                request_id,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_charge(req in charge_request()) {
            check(&charge(&req))?;
        }

        #[test]
        fn arbitrary_get_payment(id in or_text(valid_id())) {
            check(&get_payment(&GetPaymentRequest { id }))?;
        }

        #[test]
        fn arbitrary_refund(payment_id in or_text(valid_id()), request_id in or_text(valid_request_id())) {
            check(&refund(&RefundProto { payment_id, request_id }))?;
        }

        #[test]
        fn arbitrary_list_payments(
            order_id in or_text(valid_id()),
            page_size in int32(),
            page_token in or_text(valid_id()),
        ) {
            check(&list_payments(&ListPaymentsRequest { order_id, page_size, page_token }))?;
        }

        #[test]
        fn arbitrary_bytes(
            charged in hostile::bytes(charge_request().prop_map(|m| m.encode_to_vec())),
            other in hostile::bytes(Just(Vec::new())),
        ) {
            if let Ok(req) = ChargeRequest::decode(charged.as_slice()) {
                check(&charge(&req))?;
            }
            if let Ok(req) = GetPaymentRequest::decode(other.as_slice()) {
                check(&get_payment(&req))?;
            }
            if let Ok(req) = RefundProto::decode(other.as_slice()) {
                check(&refund(&req))?;
            }
            if let Ok(req) = ListPaymentsRequest::decode(other.as_slice()) {
                check(&list_payments(&req))?;
            }
        }

        #[test]
        fn valid_requests_convert(
            order_id in valid_id(),
            user_id in valid_id(),
            amount_minor in 1..=i64::MAX,
            currency_code in valid_currency(),
            request_id in valid_request_id(),
            page_size in 0..=i32::MAX,
            token in proptest::option::of(valid_id()),
        ) {
            let req = ChargeRequest {
                order_id: order_id.clone(),
                user_id: user_id.clone(),
                amount: Some(Money { currency_code: currency_code.clone(), amount_minor }),
                request_id: request_id.clone(),
            };
            let new = charge(&req).map_err(|s| TestCaseError::fail(format!("{s:?}")))?;
            prop_assert_eq!(
                (new.order_id, new.user_id, new.amount_minor, new.currency_code, new.request_id),
                (order_id.clone(), user_id.clone(), amount_minor, currency_code, request_id.clone())
            );
            prop_assert_eq!(get_payment(&GetPaymentRequest { id: order_id.clone() }).ok(), Some(order_id.clone()));
            let refunded = refund(&RefundProto { payment_id: order_id.clone(), request_id: request_id.clone() })
                .map_err(|s| TestCaseError::fail(format!("{s:?}")))?;
            prop_assert_eq!((refunded.payment_id, refunded.request_id), (order_id.clone(), request_id));
            let (whose, page) = list_payments(&ListPaymentsRequest {
                order_id: order_id.clone(),
                page_size,
                page_token: token.clone().unwrap_or_default(),
            })
            .map_err(|s| TestCaseError::fail(format!("{s:?}")))?;
            prop_assert_eq!(whose, order_id);
            prop_assert!((1..=1000).contains(&page.size));
            prop_assert_eq!(page.after, token);
        }
    }
}
