//! A real catalog service for tests that place orders: the order service prices every line from
//! it, so a test creates the products it orders first.
#![allow(dead_code)]

use shopmesh::api::catalog::v1::catalog_service_client::CatalogServiceClient;
use shopmesh::api::catalog::v1::{CreateProductRequest, Product, UpdateProductRequest};
use shopmesh::api::common::v1::Money;
use shopmesh::mesh::testing::{self, Backend, Spawned, TestDb};
use shopmesh_catalog::{Catalog as CatalogService, CatalogConfig};

/// A catalog service on 127.0.0.1:0 over a database of its own.
#[derive(Debug)]
pub struct Catalog {
    /// The running service.
    pub service: Spawned,
    /// Its database.
    pub db: TestDb,
}

impl Catalog {
    /// Starts a catalog on `backend`.
    pub async fn start(backend: Backend) -> Self {
        let db = testing::database(backend, "catalog").await;
        let config = CatalogConfig {
            listen: testing::ANY_PORT,
            database_url: db.url.clone(),
            database_read_url: None,
        };
        let service =
            testing::spawn_service::<CatalogService>(&testing::mesh(testing::mesh_config()), config).await;
        Self { service, db }
    }

    /// Starts a catalog on `backend` holding `products` (SKU, price in minor units, currency),
    /// all active.
    pub async fn with(backend: Backend, products: &[(&str, i64, &str)]) -> Self {
        let catalog = Self::start(backend).await;
        for (sku, amount, currency) in products {
            catalog.create(sku, *amount, currency).await;
        }
        catalog
    }

    /// `http://addr`, for `--catalog-url`.
    pub fn url(&self) -> String {
        self.service.url()
    }

    /// A client of it.
    pub async fn client(&self) -> CatalogServiceClient<tonic::transport::Channel> {
        CatalogServiceClient::connect(self.url()).await.expect("connect to the catalog")
    }

    /// Creates an active product.
    pub async fn create(&self, sku: &str, amount_minor: i64, currency: &str) -> Product {
        let product = Product {
            sku: sku.to_owned(),
            display_name: format!("Product {sku}"),
            unit_price: Some(Money { currency_code: currency.to_owned(), amount_minor }),
            active: true,
            ..Product::default()
        };
        self.client()
            .await
            .create_product(CreateProductRequest { product: Some(product) })
            .await
            .expect("create product")
            .into_inner()
    }

    /// Sets a product's price (and nothing else).
    pub async fn set_price(&self, sku: &str, amount_minor: i64, currency: &str) -> Product {
        let product = Product {
            sku: sku.to_owned(),
            unit_price: Some(Money { currency_code: currency.to_owned(), amount_minor }),
            ..Product::default()
        };
        let mask = prost_types::FieldMask { paths: vec!["unit_price".to_owned()] };
        self.client()
            .await
            .update_product(UpdateProductRequest { product: Some(product), update_mask: Some(mask) })
            .await
            .expect("update price")
            .into_inner()
    }

    /// Marks a product inactive.
    pub async fn deactivate(&self, sku: &str) -> Product {
        let product = Product { sku: sku.to_owned(), active: false, ..Product::default() };
        let mask = prost_types::FieldMask { paths: vec!["active".to_owned()] };
        self.client()
            .await
            .update_product(UpdateProductRequest { product: Some(product), update_mask: Some(mask) })
            .await
            .expect("deactivate")
            .into_inner()
    }

    /// Stops it and drops its database.
    pub async fn stop(self) {
        self.service.stop().await.expect("catalog stops");
        self.db.drop_database().await;
    }
}
