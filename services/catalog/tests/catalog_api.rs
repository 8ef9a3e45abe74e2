//! The catalog service over real gRPC on 127.0.0.1:0, on SQLite and (when configured) PostgreSQL.

use shopmesh::api::catalog::v1::{
    ActiveFilter, BatchGetProductsRequest, CreateProductRequest, GetProductRequest, ListProductsRequest,
    Product, UpdateProductRequest, catalog_service_client::CatalogServiceClient,
};
use shopmesh::api::common::v1::Money;
use shopmesh::mesh::service::MeshService as _;
use shopmesh::mesh::testing::{self, Backend, Spawned, TestDb, field_violations};
use shopmesh_catalog::CatalogConfig;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::{ErrorDetail, StatusExt as _};

struct Running {
    service: Spawned,
    db: TestDb,
    client: CatalogServiceClient<Channel>,
}

async fn start(backend: Backend) -> Running {
    let db = testing::database(backend, "catalog").await;
    let config = CatalogConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url: db.url.clone(),
        database_read_url: None,
    };
    let service =
        testing::spawn_service::<shopmesh_catalog::Catalog>(&testing::mesh(testing::mesh_config()), config)
            .await;
    let client = CatalogServiceClient::connect(service.url()).await.expect("connect");
    Running { service, db, client }
}

fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money { currency_code: "USD".into(), amount_minor })
}

fn product(sku: &str, name: &str, price: Option<Money>, active: bool) -> Product {
    Product { sku: sku.into(), display_name: name.into(), unit_price: price, active, ..Product::default() }
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
}

/// The SKUs a NOT_FOUND names in its `google.rpc.ResourceInfo` details, in order.
fn missing_skus(status: &Status) -> Vec<String> {
    status
        .get_error_details_vec()
        .into_iter()
        .filter_map(|d| match d {
            ErrorDetail::ResourceInfo(r) if r.resource_type == shopmesh_catalog::RESOURCE_TYPE => {
                Some(r.resource_name)
            }
            _ => None,
        })
        .collect()
}

impl Running {
    async fn stop(self) {
        self.service.stop().await.expect("clean shutdown");
        self.db.drop_database().await;
    }

    async fn create(&mut self, p: Product) -> Result<Product, Status> {
        self.client
            .create_product(CreateProductRequest { product: Some(p) })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn get(&mut self, sku: &str) -> Result<Product, Status> {
        self.client.get_product(GetProductRequest { sku: sku.into() }).await.map(tonic::Response::into_inner)
    }

    async fn update(&mut self, p: Product, paths: Option<&[&str]>) -> Result<Product, Status> {
        let update_mask = paths.and_then(mask);
        self.client
            .update_product(UpdateProductRequest { product: Some(p), update_mask })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn batch(&mut self, skus: &[&str]) -> Result<Vec<Product>, Status> {
        let skus = skus.iter().map(|s| (*s).to_owned()).collect();
        self.client
            .batch_get_products(BatchGetProductsRequest { skus })
            .await
            .map(|r| r.into_inner().products)
    }

    /// Every product the filter passes, page by page, and how many pages it took.
    async fn list_all(&mut self, page_size: i32, filter: ActiveFilter) -> (Vec<String>, usize) {
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = self
                .client
                .list_products(ListProductsRequest {
                    page_size,
                    page_token: token,
                    active_filter: filter.into(),
                })
                .await
                .expect("list")
                .into_inner();
            pages += 1;
            assert!(page.products.len() <= page_size as usize);
            seen.extend(page.products.into_iter().map(|p| p.sku));
            if page.next_page_token.is_empty() {
                return (seen, pages);
            }
            token = page.next_page_token;
        }
    }
}

#[tokio::test]
async fn create_get_and_update_with_a_mask() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let created = t.create(product("BOOK-42", "  The Book ", usd(1999), true)).await.expect("create");
        assert_eq!(created.sku, "BOOK-42", "{backend:?}");
        assert_eq!(created.display_name, "The Book", "{backend:?}: trimmed");
        assert_eq!(created.unit_price, usd(1999), "{backend:?}");
        assert!(created.active, "{backend:?}");
        assert!(created.create_time.is_some() && created.create_time == created.update_time);
        assert!(!created.etag.is_empty(), "{backend:?}");

        assert_eq!(t.get("BOOK-42").await.expect("get"), created, "{backend:?}");

        // Only the masked field changes, whatever else the message carries.
        let reprice = Product {
            unit_price: Some(Money { currency_code: "EUR".into(), amount_minor: 1500 }),
            ..product("BOOK-42", "Ignored", None, false)
        };
        let repriced = t.update(reprice, Some(&["unit_price"])).await.expect("update");
        assert_eq!(repriced.unit_price, Some(Money { currency_code: "EUR".into(), amount_minor: 1500 }));
        assert_eq!((repriced.display_name.as_str(), repriced.active), ("The Book", true), "{backend:?}");
        assert_ne!(repriced.etag, created.etag, "{backend:?}: every update changes the etag");
        assert_eq!(repriced.create_time, created.create_time, "{backend:?}");

        // Without a mask, the fields holding values are updated; a false `active` is no value.
        let renamed =
            t.update(product("BOOK-42", "Second Edition", None, false), None).await.expect("rename");
        assert_eq!(renamed.display_name, "Second Edition", "{backend:?}");
        assert!(renamed.active, "{backend:?}: implied mask leaves active alone");
        assert_eq!(renamed.unit_price, repriced.unit_price, "{backend:?}");

        let retired = t.update(product("BOOK-42", "", None, false), Some(&["active"])).await.expect("retire");
        assert!(!retired.active, "{backend:?}");
        assert_eq!(t.get("BOOK-42").await.expect("get"), retired, "{backend:?}: stored as answered");
        t.stop().await;
    }
}

#[tokio::test]
async fn etags_make_updates_conditional() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let first = t.create(product("PEN.7", "Pen", usd(99), true)).await.expect("create");

        // Based on the version read: applies, and yields a new etag.
        let based = Product { etag: first.etag.clone(), ..product("PEN.7", "Blue Pen", None, false) };
        let second = t.update(based, Some(&["display_name"])).await.expect("conditional update");
        assert_eq!(second.display_name, "Blue Pen", "{backend:?}");

        // Based on the old version (another writer got in first): ABORTED, nothing written.
        let stale = Product { etag: first.etag.clone(), ..product("PEN.7", "Red Pen", None, false) };
        let err = t.update(stale, Some(&["display_name"])).await.expect_err("stale etag");
        assert_eq!(err.code(), Code::Aborted, "{backend:?}: {err:?}");
        assert_eq!(
            err.get_error_details().error_info().map(|i| i.reason.clone()).as_deref(),
            Some("ETAG_MISMATCH"),
            "{backend:?}"
        );
        assert_eq!(t.get("PEN.7").await.expect("get"), second, "{backend:?}: unchanged");

        // An etag that was never issued for it (a revision it has not reached) is stale too.
        let future = Product { etag: "\"99\"".into(), ..product("PEN.7", "Red Pen", None, false) };
        assert_eq!(
            t.update(future, Some(&["display_name"])).await.expect_err("future").code(),
            Code::Aborted
        );

        // A malformed etag is the caller's mistake, not a conflict.
        let garbage = Product { etag: "W/abc".into(), ..product("PEN.7", "Red Pen", None, false) };
        let err = t.update(garbage, Some(&["display_name"])).await.expect_err("garbage");
        assert_eq!(field_violations(&err), ["product.etag"], "{backend:?}");

        // Without an etag the update is unconditional.
        let blind = t.update(product("PEN.7", "Green Pen", None, false), Some(&["display_name"])).await;
        assert_eq!(blind.expect("unconditional").display_name, "Green Pen", "{backend:?}");

        // Of two writers holding the same etag, exactly one wins.
        let current = t.get("PEN.7").await.expect("get");
        let race = |name: &str| {
            let req = UpdateProductRequest {
                product: Some(Product { etag: current.etag.clone(), ..product("PEN.7", name, None, false) }),
                update_mask: mask(&["display_name"]),
            };
            let mut client = t.client.clone();
            async move { client.update_product(req).await }
        };
        let (ra, rb) = tokio::join!(race("A"), race("B"));
        let codes = [ra.as_ref().err().map(Status::code), rb.as_ref().err().map(Status::code)];
        assert!(
            codes == [None, Some(Code::Aborted)] || codes == [Some(Code::Aborted), None],
            "{backend:?}: {codes:?}"
        );
        t.stop().await;
    }
}

#[tokio::test]
async fn a_taken_sku_is_already_exists() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let first = t.create(product("MUG", "Mug", usd(500), true)).await.expect("create");
        for again in [product("MUG", "Mug", usd(500), true), product("MUG", "Other mug", usd(1), false)] {
            let err = t.create(again).await.expect_err("taken");
            assert_eq!(err.code(), Code::AlreadyExists, "{backend:?}: {err:?}");
        }
        assert_eq!(t.get("MUG").await.expect("get"), first, "{backend:?}: the first one stays");
        // SKUs are exact: another case is another (here invalid) SKU, not the same product.
        let err = t.create(product("mug", "Mug", usd(500), true)).await.expect_err("lower case");
        assert_eq!(field_violations(&err), ["product.sku"], "{backend:?}");
        t.stop().await;
    }
}

#[tokio::test]
async fn unknown_skus_are_not_found_by_name() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let err = t.get("NOPE").await.expect_err("unknown");
        assert_eq!(err.code(), Code::NotFound, "{backend:?}");
        assert_eq!(missing_skus(&err), ["NOPE"], "{backend:?}");
        let err = t.update(product("NOPE", "x", None, false), None).await.expect_err("unknown");
        assert_eq!(err.code(), Code::NotFound, "{backend:?}");
        assert_eq!(missing_skus(&err), ["NOPE"], "{backend:?}");
        let with_etag = Product { etag: "\"1\"".into(), ..product("NOPE", "x", None, false) };
        let err = t.update(with_etag, None).await.expect_err("unknown, with an etag");
        assert_eq!(err.code(), Code::NotFound, "{backend:?}: NOT_FOUND, not ABORTED");
        t.stop().await;
    }
}

#[tokio::test]
async fn list_pages_in_sku_order_and_filters_on_active() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        // Created out of order, with SKUs whose byte order differs from a locale's ("_" and
        // "." and digits against letters): pages follow byte order on both engines.
        let skus = ["B", "A-2", "A_1", "A.3", "9", "C", "AA", "A"];
        for (i, sku) in skus.iter().enumerate() {
            t.create(product(sku, sku, usd(100 + i as i64), i % 2 == 0)).await.expect("create");
        }
        let mut every: Vec<String> = skus.iter().map(|s| (*s).to_owned()).collect();
        every.sort();

        let (seen, pages) = t.list_all(3, ActiveFilter::Unspecified).await;
        assert_eq!(seen, every, "{backend:?}: every product once, in SKU order");
        assert_eq!(pages, 3, "{backend:?}");

        let active: Vec<String> = every
            .iter()
            .filter(|s| skus.iter().position(|x| x == s).is_some_and(|i| i % 2 == 0))
            .cloned()
            .collect();
        let inactive: Vec<String> = every.iter().filter(|s| !active.contains(s)).cloned().collect();
        assert_eq!(t.list_all(2, ActiveFilter::Active).await.0, active, "{backend:?}");
        assert_eq!(t.list_all(1, ActiveFilter::Inactive).await.0, inactive, "{backend:?}");

        // A page of exactly the rest has no next page; the default size takes everything here.
        let (all, pages) = t.list_all(8, ActiveFilter::Unspecified).await;
        assert_eq!((all.len(), pages), (8, 1), "{backend:?}");

        // Products added behind the cursor do not shift later pages (keyset, not offset).
        let first = t
            .client
            .list_products(ListProductsRequest { page_size: 4, page_token: String::new(), active_filter: 0 })
            .await
            .expect("list")
            .into_inner();
        t.create(product("0", "zero", usd(1), true)).await.expect("create before the cursor");
        let rest = t
            .client
            .list_products(ListProductsRequest {
                page_size: 10,
                page_token: first.next_page_token.clone(),
                active_filter: 0,
            })
            .await
            .expect("list")
            .into_inner();
        let paged: Vec<String> = first.products.into_iter().chain(rest.products).map(|p| p.sku).collect();
        assert_eq!(paged, every, "{backend:?}: nothing repeated, nothing skipped");

        // A token is bound to its filter.
        let err = t
            .client
            .list_products(ListProductsRequest {
                page_size: 4,
                page_token: first.next_page_token,
                active_filter: ActiveFilter::Active.into(),
            })
            .await
            .expect_err("other filter");
        assert_eq!(field_violations(&err), ["page_token"], "{backend:?}");
        t.stop().await;
    }
}

#[tokio::test]
async fn batch_get_is_all_in_request_order_or_not_found() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        for sku in ["A", "B", "C"] {
            t.create(product(sku, sku, usd(1), true)).await.expect("create");
        }
        let got = t.batch(&["C", "A", "B", "A"]).await.expect("batch");
        let skus: Vec<&str> = got.iter().map(|p| p.sku.as_str()).collect();
        assert_eq!(skus, ["C", "A", "B", "A"], "{backend:?}: request order, repeats kept");
        assert_eq!(got[0], t.get("C").await.expect("get"), "{backend:?}: whole products");
        assert!(t.batch(&[]).await.expect("empty").is_empty(), "{backend:?}");

        let err = t.batch(&["A", "X", "B", "Y", "X"]).await.expect_err("missing");
        assert_eq!(err.code(), Code::NotFound, "{backend:?}");
        assert_eq!(missing_skus(&err), ["X", "Y"], "{backend:?}: each missing SKU once, in order");
        assert!(err.message().contains("X") && err.message().contains("Y"), "{}", err.message());

        // The limit is 100: 100 go, 101 do not (with no database work).
        let hundred: Vec<String> = (0..100).map(|i| ["A", "B", "C"][i % 3].to_owned()).collect();
        let refs: Vec<&str> = hundred.iter().map(String::as_str).collect();
        assert_eq!(t.batch(&refs).await.expect("100").len(), 100, "{backend:?}");
        let mut over = refs.clone();
        over.push("A");
        let err = t.batch(&over).await.expect_err("101");
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
        assert_eq!(field_violations(&err), ["skus"], "{backend:?}");

        // A hundred missing SKUs of the longest kind: still an answer every client can read.
        let long: Vec<String> = (0..100).map(|i| format!("{i:0>64}")).collect();
        let refs: Vec<&str> = long.iter().map(String::as_str).collect();
        let err = t.batch(&refs).await.expect_err("missing");
        assert_eq!(err.code(), Code::NotFound, "{backend:?}: {err:?}");
        assert_eq!(missing_skus(&err).len(), shopmesh::mesh::validation::MAX_LISTED_VIOLATIONS);
        assert!(err.message().starts_with("100 products not found"), "{}", err.message());

        let err = t.batch(&["A", "b", ""]).await.expect_err("bad skus");
        assert_eq!(field_violations(&err), ["skus[1]", "skus[2]"], "{backend:?}");
        t.stop().await;
    }
}

#[tokio::test]
async fn invalid_input_names_every_field_and_writes_nothing() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let err = t
            .create(product(
                "no spaces",
                " ",
                Some(Money { currency_code: "usd".into(), amount_minor: 0 }),
                true,
            ))
            .await
            .expect_err("invalid");
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
        assert_eq!(
            field_violations(&err),
            [
                "product.sku",
                "product.display_name",
                "product.unit_price.amount_minor",
                "product.unit_price.currency_code"
            ],
            "{backend:?}"
        );

        // Every way a price can be wrong.
        for (price, field) in [
            (None, "product.unit_price"),
            (usd(0), "product.unit_price.amount_minor"),
            (usd(-1), "product.unit_price.amount_minor"),
            (usd(i64::MIN), "product.unit_price.amount_minor"),
            (usd(1_000_000_000_001), "product.unit_price.amount_minor"),
            (usd(i64::MAX), "product.unit_price.amount_minor"),
            (
                Some(Money { currency_code: "ABC".into(), amount_minor: 1 }),
                "product.unit_price.currency_code",
            ),
            (
                Some(Money { currency_code: "XXX".into(), amount_minor: 1 }),
                "product.unit_price.currency_code",
            ),
            (
                Some(Money { currency_code: "HRK".into(), amount_minor: 1 }),
                "product.unit_price.currency_code",
            ),
            (Some(Money { currency_code: "US".into(), amount_minor: 1 }), "product.unit_price.currency_code"),
            (
                Some(Money { currency_code: String::new(), amount_minor: 1 }),
                "product.unit_price.currency_code",
            ),
        ] {
            let err = t.create(product("OK", "Ok", price.clone(), true)).await.expect_err("bad price");
            assert_eq!(field_violations(&err), [field], "{backend:?}: {price:?}");
        }
        // The edges that are valid.
        t.create(product("MAX", "Max", usd(1_000_000_000_000), true)).await.expect("highest price");
        t.create(product("YEN", "Yen", Some(Money { currency_code: "JPY".into(), amount_minor: 1 }), true))
            .await
            .expect("lowest price");

        // Every way a SKU can be wrong.
        for sku in ["", "lower", "A B", "A/B", "Ä", &"A".repeat(65)] {
            let err = t.create(product(sku, "x", usd(1), true)).await.expect_err("bad sku");
            assert_eq!(field_violations(&err), ["product.sku"], "{backend:?}: {sku:?}");
            let err = t.get(sku).await.expect_err("bad sku");
            assert_eq!(field_violations(&err), ["sku"], "{backend:?}: {sku:?}");
        }
        t.create(product(&"A".repeat(64), "Longest", usd(1), true)).await.expect("64 characters");

        let err = t.client.create_product(CreateProductRequest { product: None }).await.expect_err("none");
        assert_eq!(field_violations(&err), ["product"], "{backend:?}");
        let err = t
            .client
            .update_product(UpdateProductRequest { product: None, update_mask: None })
            .await
            .expect_err("none");
        assert_eq!(field_violations(&err), ["product"], "{backend:?}");

        for (paths, field) in [
            (&["sku"][..], "update_mask"),
            (&["etag"][..], "update_mask"),
            (&["price"][..], "update_mask"),
            (&["unit_price"][..], "product.unit_price"),
        ] {
            let err = t.update(product("MAX", "", None, false), Some(paths)).await.expect_err("bad mask");
            assert_eq!(field_violations(&err), [field], "{backend:?}: {paths:?}");
        }
        let err =
            t.update(product("MAX", "", usd(-5), false), Some(&["unit_price"])).await.expect_err("bad price");
        assert_eq!(field_violations(&err), ["product.unit_price.amount_minor"], "{backend:?}");

        let err = t
            .client
            .list_products(ListProductsRequest {
                page_size: -1,
                page_token: "garbage".into(),
                active_filter: 7,
            })
            .await
            .expect_err("bad page");
        assert_eq!(field_violations(&err), ["page_size", "active_filter", "page_token"], "{backend:?}");

        // Nothing invalid was written: only the valid creates above exist.
        let (all, _) = t.list_all(100, ActiveFilter::Unspecified).await;
        assert_eq!(all, ["A".repeat(64), "MAX".into(), "YEN".into()], "{backend:?}");
        let max = t.get("MAX").await.expect("get");
        assert_eq!(max.unit_price, usd(1_000_000_000_000), "{backend:?}: no rejected update landed");
        t.stop().await;
    }
}

#[tokio::test]
async fn health_and_reflection() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let t = start(Backend::Sqlite).await;
    let channel = Channel::from_shared(t.service.url()).expect("url").connect().await.expect("connect");
    let mut health = HealthClient::new(channel.clone());
    for service in ["", shopmesh_catalog::Catalog::GRPC_SERVICE] {
        let status =
            health.check(HealthCheckRequest { service: service.into() }).await.expect("check").into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        // NOT_FOUND details name this type; grpcurl resolves it here to print them.
        MessageRequest::FileContainingSymbol("google.rpc.ResourceInfo".into()),
    ]
    .map(|m| ServerReflectionRequest { host: String::new(), message_request: Some(m) });
    let mut replies = reflection
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .expect("reflect")
        .into_inner();
    let reply = replies.message().await.expect("reply").expect("first reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reply {reply:?}");
    };
    let reply = replies.message().await.expect("reply").expect("second reply");
    assert!(
        matches!(reply.message_response, Some(MessageResponse::FileDescriptorResponse(_))),
        "google.rpc.ResourceInfo is not resolvable: {reply:?}"
    );
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == shopmesh_catalog::Catalog::GRPC_SERVICE), "{names:?}");
    t.stop().await;
}

#[tokio::test]
async fn replicas_migrating_at_once_both_start() {
    use shopmesh::mesh::db;
    for backend in testing::backends() {
        let test_db = testing::database(backend, "migrate").await;
        let mesh = testing::mesh_config();
        let opens = (0..3).map(|_| db::open(&test_db.url, &mesh, shopmesh_catalog::Catalog::MIGRATIONS));
        let pools = futures::future::join_all(opens).await;
        for pool in pools {
            let pool = pool.unwrap_or_else(|e| panic!("{backend:?}: a replica failed to migrate: {e}"));
            pool.close().await;
        }
        test_db.drop_database().await;
    }
}
