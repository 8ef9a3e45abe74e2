//! Proto → domain for every `CatalogService` request: the validation the handlers run before
//! any database work, as plain functions so fuzz targets and property tests run exactly this
//! code.
//!
//! Each function answers a valid request with what the handler works on, and anything else
//! with INVALID_ARGUMENT listing every bad field as a `google.rpc.BadRequest` violation.

use shopmesh::api::catalog::v1::{
    ActiveFilter as ActiveFilterProto, BatchGetProductsRequest, CreateProductRequest, GetProductRequest,
    ListProductsRequest, UpdateProductRequest,
};
use shopmesh::mesh::validation::Violations;
use tonic::Status;

use crate::domain::{self, ActiveFilter, ListQuery, NewProduct, Sku, Update, UpdateInput};
use crate::error::Error;

fn invalid(v: Violations) -> Status {
    Error::from(v).into()
}

fn required(field: &str) -> Status {
    let mut v = Violations::new();
    v.add(field, "is required");
    invalid(v)
}

/// The product a CreateProduct asks for.
pub fn create_product(req: &CreateProductRequest) -> Result<NewProduct, Status> {
    let p = req.product.as_ref().ok_or_else(|| required("product"))?;
    let unit_price = p.unit_price.as_ref().map(|m| (m.amount_minor, m.currency_code.as_str()));
    NewProduct::parse(&p.sku, &p.display_name, unit_price, p.active).map_err(invalid)
}

/// The SKU a GetProduct names.
pub fn get_product(req: &GetProductRequest) -> Result<Sku, Status> {
    let mut v = Violations::new();
    let sku = Sku::check(&mut v, "sku", &req.sku);
    match sku {
        Some(sku) => Ok(sku),
        None => Err(invalid(v)),
    }
}

/// The page a ListProducts asks for.
pub fn list_products(req: &ListProductsRequest) -> Result<ListQuery, Status> {
    // An enum field holds any int32 on the wire; values this API does not define are refused.
    let filter = ActiveFilterProto::try_from(req.active_filter).ok().map(|f| match f {
        ActiveFilterProto::Unspecified => ActiveFilter::All,
        ActiveFilterProto::Active => ActiveFilter::Active,
        ActiveFilterProto::Inactive => ActiveFilter::Inactive,
    });
    ListQuery::parse(req.page_size, &req.page_token, filter).map_err(invalid)
}

/// The product an UpdateProduct names, the version it expects and the change.
pub fn update_product(req: &UpdateProductRequest) -> Result<Update, Status> {
    let p = req.product.as_ref().ok_or_else(|| required("product"))?;
    let paths = req.update_mask.as_ref().map(|m| m.paths.as_slice()).unwrap_or_default();
    Update::parse(UpdateInput {
        sku: &p.sku,
        etag: &p.etag,
        paths,
        display_name: &p.display_name,
        unit_price: p.unit_price.as_ref().map(|m| (m.amount_minor, m.currency_code.as_str())),
        active: p.active,
    })
    .map_err(invalid)
}

/// The SKUs a BatchGetProducts names, in request order.
pub fn batch_get_products(req: &BatchGetProductsRequest) -> Result<Vec<Sku>, Status> {
    domain::batch_skus(&req.skus).map_err(invalid)
}

#[cfg(test)]
mod tests {
    //! Property tests: arbitrary requests and arbitrary bytes are either converted or rejected
    //! with INVALID_ARGUMENT and field violations, never a panic; valid requests convert.

    use super::*;
    use proptest::prelude::*;
    use prost::Message as _;
    use prost_types::{FieldMask, Timestamp};
    use shopmesh::api::catalog::v1::Product;
    use shopmesh::api::common::v1::Money;
    use shopmesh::mesh::hostile::{self, int32, int64, or_text, text, valid_currency};

    use crate::domain::{CURRENCIES, MAX_BATCH, MAX_UNIT_PRICE_MINOR, Price};

    fn check<T>(outcome: &Result<T, Status>) -> Result<(), TestCaseError> {
        match hostile::unacceptable(outcome) {
            None => Ok(()),
            Some(finding) => Err(TestCaseError::fail(finding)),
        }
    }

    fn valid_sku() -> BoxedStrategy<String> {
        "[A-Z0-9_.-]{1,64}".boxed()
    }

    /// A currency this service accepts.
    fn listed_currency() -> BoxedStrategy<String> {
        proptest::sample::select(CURRENCIES).prop_map(str::to_owned).boxed()
    }

    /// 1 to 200 characters, none a control character, not blank at either end.
    fn valid_display_name() -> BoxedStrategy<String> {
        "[^\\p{Cc}\\s]([^\\p{Cc}]{0,198}[^\\p{Cc}\\s])?".boxed()
    }

    fn money() -> impl Strategy<Value = Money> {
        let amount = prop_oneof![
            int64(),
            Just(MAX_UNIT_PRICE_MINOR),
            Just(MAX_UNIT_PRICE_MINOR + 1),
            1..=MAX_UNIT_PRICE_MINOR,
        ];
        (prop_oneof![listed_currency(), valid_currency(), text()], amount)
            .prop_map(|(currency_code, amount_minor)| Money { currency_code, amount_minor })
    }

    fn etag() -> BoxedStrategy<String> {
        prop_oneof![Just(String::new()), any::<i64>().prop_map(|r| format!("\"{r}\"")), text(),].boxed()
    }

    fn product() -> impl Strategy<Value = Product> {
        let timestamp =
            (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos });
        (
            or_text(valid_sku()),
            or_text(valid_display_name()),
            proptest::option::of(money()),
            any::<bool>(),
            proptest::option::of(timestamp.clone()),
            proptest::option::of(timestamp),
            etag(),
        )
            .prop_map(|(sku, display_name, unit_price, active, create_time, update_time, etag)| {
                Product { sku, display_name, unit_price, active, create_time, update_time, etag }
            })
    }

    fn mask_path() -> BoxedStrategy<String> {
        prop_oneof![
            3 => prop_oneof![
                Just("display_name"), Just("unit_price"), Just("active"), Just("*"), Just("sku"),
                Just("etag"), Just("create_time"), Just("update_time"), Just("unit_price.amount_minor"),
            ]
            .prop_map(str::to_owned),
            1 => text(),
        ]
        .boxed()
    }

    fn create_product_request() -> impl Strategy<Value = CreateProductRequest> {
        proptest::option::of(product()).prop_map(|product| CreateProductRequest { product })
    }

    fn update_product_request() -> impl Strategy<Value = UpdateProductRequest> {
        let mask = prop_oneof![
            proptest::collection::vec(mask_path(), 0..4),
            // Oversized: far more paths than fields, as a hostile client would send.
            proptest::collection::vec(mask_path(), 0..2000),
        ]
        .prop_map(|paths| FieldMask { paths });
        (proptest::option::of(product()), proptest::option::of(mask))
            .prop_map(|(product, update_mask)| UpdateProductRequest { product, update_mask })
    }

    fn list_products_request() -> impl Strategy<Value = ListProductsRequest> {
        let token = prop_oneof![
            text(),
            (prop_oneof![Just("all:"), Just("active:"), Just("inactive:")], or_text(valid_sku()))
                .prop_map(|(prefix, sku)| format!("{prefix}{sku}")),
        ];
        let filter = prop_oneof![3 => 0..=2, 1 => any::<i32>()];
        (int32(), token, filter).prop_map(|(page_size, page_token, active_filter)| ListProductsRequest {
            page_size,
            page_token,
            active_filter,
        })
    }

    fn batch_get_products_request() -> impl Strategy<Value = BatchGetProductsRequest> {
        prop_oneof![
            proptest::collection::vec(or_text(valid_sku()), 0..=MAX_BATCH),
            proptest::collection::vec(valid_sku(), 0..=MAX_BATCH),
            // Over the limit, and far over it.
            proptest::collection::vec(valid_sku(), MAX_BATCH + 1..MAX_BATCH * 3),
        ]
        .prop_map(|skus| BatchGetProductsRequest { skus })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_create_product(req in create_product_request()) {
            check(&create_product(&req))?;
        }

        #[test]
        fn arbitrary_get_product(sku in or_text(valid_sku())) {
            check(&get_product(&GetProductRequest { sku }))?;
        }

        #[test]
        fn arbitrary_list_products(req in list_products_request()) {
            check(&list_products(&req))?;
        }

        #[test]
        fn arbitrary_update_product(req in update_product_request()) {
            check(&update_product(&req))?;
        }

        #[test]
        fn arbitrary_batch_get_products(req in batch_get_products_request()) {
            let outcome = batch_get_products(&req);
            check(&outcome)?;
            if req.skus.len() > MAX_BATCH {
                prop_assert!(outcome.is_err(), "{} SKUs accepted", req.skus.len());
            }
        }

        #[test]
        fn arbitrary_bytes(
            create in hostile::bytes(create_product_request().prop_map(|m| m.encode_to_vec())),
            update in hostile::bytes(update_product_request().prop_map(|m| m.encode_to_vec())),
            list in hostile::bytes(list_products_request().prop_map(|m| m.encode_to_vec())),
            other in hostile::bytes(Just(Vec::new())),
        ) {
            if let Ok(req) = CreateProductRequest::decode(create.as_slice()) {
                check(&create_product(&req))?;
            }
            if let Ok(req) = UpdateProductRequest::decode(update.as_slice()) {
                check(&update_product(&req))?;
            }
            if let Ok(req) = ListProductsRequest::decode(list.as_slice()) {
                check(&list_products(&req))?;
            }
            if let Ok(req) = GetProductRequest::decode(other.as_slice()) {
                check(&get_product(&req))?;
            }
            if let Ok(req) = BatchGetProductsRequest::decode(other.as_slice()) {
                check(&batch_get_products(&req))?;
            }
        }

        #[test]
        fn valid_requests_convert(
            sku in valid_sku(),
            display_name in valid_display_name(),
            amount_minor in 1..=MAX_UNIT_PRICE_MINOR,
            currency_code in listed_currency(),
            active in any::<bool>(),
            page_size in 0..=i32::MAX,
            skus in proptest::collection::vec(valid_sku(), 0..=MAX_BATCH),
            revision in 1..=999_999_999_999_999_999i64,
        ) {
            let unit_price = Some(Money { currency_code: currency_code.clone(), amount_minor });
            let product = Product {
                sku: sku.clone(),
                display_name: display_name.clone(),
                unit_price,
                active,
                ..Product::default()
            };
            let req = CreateProductRequest { product: Some(product.clone()) };
            let new = create_product(&req).map_err(|s| TestCaseError::fail(format!("{req:?}: {s:?}")))?;
            let price = Price { amount_minor, currency_code };
            prop_assert_eq!(new.sku.as_str(), sku.as_str());
            prop_assert_eq!(&new.display_name, &display_name);
            prop_assert_eq!(&new.unit_price, &price);
            prop_assert_eq!(new.active, active);

            let got = get_product(&GetProductRequest { sku: sku.clone() })
                .map_err(|s| TestCaseError::fail(format!("{s:?}")))?;
            prop_assert_eq!(got.as_str(), sku.as_str());

            let query = list_products(&ListProductsRequest { page_size, page_token: String::new(), active_filter: 1 })
                .map_err(|s| TestCaseError::fail(format!("{s:?}")))?;
            prop_assert!((1..=1000).contains(&query.size));
            let next = query.next_token(&got);
            let again = list_products(&ListProductsRequest { page_size, page_token: next, active_filter: 1 })
                .map_err(|s| TestCaseError::fail(format!("{s:?}")))?;
            prop_assert_eq!(again.after.as_ref().map(Sku::as_str), Some(sku.as_str()));

            let req = UpdateProductRequest {
                product: Some(Product { etag: format!("\"{revision}\""), ..product }),
                update_mask: Some(FieldMask { paths: vec!["*".into()] }),
            };
            let update = update_product(&req).map_err(|s| TestCaseError::fail(format!("{req:?}: {s:?}")))?;
            prop_assert_eq!(update.expected_revision, Some(revision));
            prop_assert_eq!(update.patch.display_name.as_deref(), Some(display_name.as_str()));
            prop_assert_eq!(update.patch.unit_price, Some(price));
            prop_assert_eq!(update.patch.active, Some(active));

            let batch = batch_get_products(&BatchGetProductsRequest { skus: skus.clone() })
                .map_err(|s| TestCaseError::fail(format!("{s:?}")))?;
            let batch: Vec<&str> = batch.iter().map(Sku::as_str).collect();
            prop_assert_eq!(batch, skus.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}
