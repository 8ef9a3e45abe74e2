//! Proto → domain for every `OrderService` request: the validation the handlers run before any
//! database work or upstream call, as plain functions so fuzz targets and property tests run
//! exactly this code.
//!
//! Each function answers a valid request with what the handler works on, and anything else
//! with INVALID_ARGUMENT listing every bad field as a `google.rpc.BadRequest` violation.

use shopmesh::api::order::v1::{CancelOrderRequest, CreateOrderRequest, GetOrderRequest, ListOrdersRequest};
use shopmesh::mesh::validation::{self, Page, Violations};
use tonic::Status;

use crate::domain::{LineInput, OrderRequest};
use crate::error::Error;

fn invalid(v: Violations) -> Status {
    Error::from(v).into()
}

/// The order a CreateOrder asks for, before the catalog prices it.
pub fn create_order(req: &CreateOrderRequest) -> Result<OrderRequest, Status> {
    let lines: Vec<LineInput<'_>> = req
        .line_items
        .iter()
        .map(|l| LineInput {
            sku: &l.sku,
            quantity: i64::from(l.quantity),
            unit_price: l.unit_price.as_ref().map(|m| (m.amount_minor, m.currency_code.as_str())),
        })
        .collect();
    OrderRequest::parse(&req.user_id, &lines, &req.request_id).map_err(invalid)
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

#[cfg(test)]
mod tests {
    //! Property tests: arbitrary requests and arbitrary bytes are either converted or rejected
    //! with INVALID_ARGUMENT and field violations, never a panic; valid requests convert.

    use super::*;
    use crate::domain::{MAX_LINES, MAX_QUANTITY};
    use proptest::prelude::*;
    use prost::Message as _;
    use shopmesh::api::common::v1::Money;
    use shopmesh::api::order::v1::LineItem;
    use shopmesh::mesh::hostile::{self, int32, int64, or_text, valid_currency, valid_id, valid_request_id};

    fn check<T>(outcome: &Result<T, Status>) -> Result<(), TestCaseError> {
        match hostile::unacceptable(outcome) {
            None => Ok(()),
            Some(finding) => Err(TestCaseError::fail(finding)),
        }
    }

    fn valid_sku() -> BoxedStrategy<String> {
        "[A-Z0-9_.-]{1,64}".boxed()
    }

    fn money() -> impl Strategy<Value = Money> {
        (or_text(valid_currency()), int64())
            .prop_map(|(currency_code, amount_minor)| Money { currency_code, amount_minor })
    }

    fn line_item() -> impl Strategy<Value = LineItem> {
        (or_text(valid_sku()), int32(), proptest::option::of(money()))
            .prop_map(|(sku, quantity, unit_price)| LineItem { sku, quantity, unit_price })
    }

    fn create_order_request() -> impl Strategy<Value = CreateOrderRequest> {
        let lines = prop_oneof![
            proptest::collection::vec(line_item(), 0..4),
            // Up to half again the most lines an order may have.
            proptest::collection::vec(line_item(), 0..=MAX_LINES * 3 / 2),
        ];
        (or_text(valid_id()), lines, or_text(valid_request_id())).prop_map(
            |(user_id, line_items, request_id)| CreateOrderRequest { user_id, line_items, request_id },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_create_order(req in create_order_request()) {
            check(&create_order(&req))?;
        }

        #[test]
        fn arbitrary_get_order(id in or_text(valid_id())) {
            check(&get_order(&GetOrderRequest { id }))?;
        }

        #[test]
        fn arbitrary_list_orders(
            user_id in or_text(valid_id()),
            page_size in int32(),
            page_token in or_text(valid_id()),
        ) {
            check(&list_orders(&ListOrdersRequest { user_id, page_size, page_token }))?;
        }

        #[test]
        fn arbitrary_cancel_order(id in or_text(valid_id()), request_id in or_text(valid_request_id())) {
            check(&cancel_order(&CancelOrderRequest { id, request_id }))?;
        }

        #[test]
        fn arbitrary_bytes(
            create in hostile::bytes(create_order_request().prop_map(|m| m.encode_to_vec())),
            other in hostile::bytes(Just(Vec::new())),
        ) {
            if let Ok(req) = CreateOrderRequest::decode(create.as_slice()) {
                check(&create_order(&req))?;
            }
            if let Ok(req) = GetOrderRequest::decode(other.as_slice()) {
                check(&get_order(&req))?;
            }
            if let Ok(req) = ListOrdersRequest::decode(other.as_slice()) {
                check(&list_orders(&req))?;
            }
            if let Ok(req) = CancelOrderRequest::decode(other.as_slice()) {
                check(&cancel_order(&req))?;
            }
        }

        #[test]
        fn valid_requests_convert(
            user_id in valid_id(),
            currency in valid_currency(),
            first_price in 1i64..=1_000_000_000,
            lines in proptest::collection::vec(
                ("[A-Z0-9_.-]{1,64}", 1..=MAX_QUANTITY as i32, 0i64..=1_000_000_000),
                0..MAX_LINES,
            ),
            request_id in proptest::option::of(valid_request_id()),
            page_size in 0..=i32::MAX,
            token in proptest::option::of(valid_id()),
        ) {
            // The first line has a positive price, so the total is positive; 100 lines of at
            // most 10000 units at 1e9 stay far below i64::MAX.
            let line_items: Vec<LineItem> = std::iter::once(("FIRST".to_owned(), 1, first_price))
                .chain(lines)
                .map(|(sku, quantity, price)| LineItem {
                    sku,
                    quantity,
                    unit_price: Some(Money { currency_code: currency.clone(), amount_minor: price }),
                })
                .collect();
            let req = CreateOrderRequest {
                user_id: user_id.clone(),
                line_items,
                request_id: request_id.clone().unwrap_or_default(),
            };
            let new = create_order(&req).map_err(|s| TestCaseError::fail(format!("{s:?}")))?;
            prop_assert_eq!(new.lines.len(), req.line_items.len());
            for (line, item) in new.lines.iter().zip(&req.line_items) {
                prop_assert_eq!(&line.sku, &item.sku);
                prop_assert_eq!(line.quantity, i64::from(item.quantity));
                let expected = item.unit_price.as_ref().map(|m| (m.amount_minor, m.currency_code.clone()));
                prop_assert_eq!(&line.expected_price, &expected);
            }
            prop_assert_eq!(new.request_id, request_id.clone());

            prop_assert_eq!(get_order(&GetOrderRequest { id: user_id.clone() }).ok(), Some(user_id.clone()));
            let (whose, page) = list_orders(&ListOrdersRequest {
                user_id: user_id.clone(),
                page_size,
                page_token: token.clone().unwrap_or_default(),
            })
            .map_err(|s| TestCaseError::fail(format!("{s:?}")))?;
            prop_assert_eq!(whose, user_id.clone());
            prop_assert!((1..=1000).contains(&page.size));
            prop_assert_eq!(page.after, token);
            let cancel = CancelOrderRequest { id: user_id.clone(), request_id: request_id.clone().unwrap_or_default() };
            prop_assert_eq!(cancel_order(&cancel).ok(), Some((user_id, request_id)));
        }
    }
}
