//! Proto → domain for every `InventoryService` request: the validation the handlers run before
//! any database work. A valid request gives what the handler works on; anything else is
//! INVALID_ARGUMENT listing every bad field as a `google.rpc.BadRequest` violation.

use shopmesh::api::inventory::v1::{GetStockRequest, ListStockRequest, SetStockRequest};
use shopmesh::mesh::validation::{self, Violations};
use tonic::Status;

use crate::domain::MAX_ON_HAND;
use crate::error::Error;

fn invalid(v: Violations) -> Status {
    Error::from(v).into()
}

/// The SKU and quantity a SetStock sets.
pub fn set_stock(req: &SetStockRequest) -> Result<(String, i64), Status> {
    let mut v = Violations::new();
    shopmesh_shop::sku(&mut v, "sku", &req.sku);
    if !(0..=MAX_ON_HAND).contains(&req.on_hand) {
        v.add("on_hand", format!("must be 0 to {MAX_ON_HAND}"));
    }
    v.check((req.sku.clone(), req.on_hand)).map_err(invalid)
}

/// The SKU a GetStock names.
pub fn get_stock(req: &GetStockRequest) -> Result<String, Status> {
    let mut v = Violations::new();
    shopmesh_shop::sku(&mut v, "sku", &req.sku);
    v.check(req.sku.clone()).map_err(invalid)
}

/// The page a ListStock asks for: its size and the SKU to continue after.
pub fn list_stock(req: &ListStockRequest) -> Result<(u32, Option<String>), Status> {
    let mut v = Violations::new();
    let size = validation::page_size(&mut v, "page_size", req.page_size);
    // The token is the last SKU of the previous page (keyset paging in SKU order).
    let after = (!req.page_token.is_empty()).then(|| req.page_token.clone());
    if let Some(sku) = &after
        && shopmesh_shop::sku_problem(sku).is_some()
    {
        v.add("page_token", "is not a token returned by this service");
    }
    v.check((size, after)).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_name_their_fields() {
        let err = set_stock(&SetStockRequest { sku: "lower".into(), on_hand: -1 }).expect_err("invalid");
        let fields = shopmesh::mesh::testing::field_violations(&err);
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(fields.contains(&"sku".to_owned()) && fields.contains(&"on_hand".to_owned()), "{fields:?}");
        assert_eq!(
            set_stock(&SetStockRequest { sku: "A-1".into(), on_hand: 5 }).expect("valid"),
            ("A-1".into(), 5)
        );
        let err = list_stock(&ListStockRequest { page_size: -1, page_token: "bad token".into() })
            .expect_err("invalid");
        assert_eq!(shopmesh::mesh::testing::field_violations(&err).len(), 2);
    }
}
