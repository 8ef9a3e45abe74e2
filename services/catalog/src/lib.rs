//! The catalog service: the products that can be ordered, each named by its SKU, and their
//! prices (`shopmesh.catalog.v1.CatalogService`, port 50054 by default).
//!
//! [`Catalog`] is the service as the mesh runs it: the runtime opens the service's own database (migrating it), then serves `CatalogService` with
//! health and reflection until shutdown. The rules (SKUs, prices in active ISO 4217 currencies,
//! update masks, etags, page tokens, batch limits) live in [`domain`], every SQL statement in
//! `store`, the validation of each request in [`convert`], the statuses in `error`, and the
//! rest of the protobuf conversion in `grpc`. Its settings are [`CatalogConfig`].
//!
//! What callers can rely on:
//! - A SKU is the product's id and is created once: a second CreateProduct with it, even a
//!   retry of the same request, is ALREADY_EXISTS. So CreateProduct needs no `request_id`.
//! - Every product carries an `etag` (its revision). UpdateProduct with the etag it read
//!   changes the product only if nobody changed it since, else ABORTED; without one it
//!   overwrites the masked fields.
//! - ListProducts pages in SKU order (byte-wise on both engines) with keyset page tokens, so
//!   pages stay consistent while products are added; a token is bound to its `active_filter`.
//! - BatchGetProducts returns every requested product in request order, or NOT_FOUND naming
//!   the missing SKUs (AIP-231); at most 100 SKUs per call.
//! - Anyone may read; bearer-token callers (from outside the mesh) may not create or update.
//! - Bad input is INVALID_ARGUMENT with a field violation per bad field, bounded in size.

pub mod config;
pub mod convert;
pub mod domain;
mod error;
mod grpc;
mod store;

use std::net::SocketAddr;

use shopmesh::api::catalog::v1::catalog_service_server::{self, CatalogServiceServer};
use shopmesh::mesh::Error;
use shopmesh::mesh::db::{Migrations, Pool};
use shopmesh::mesh::service::{Mesh, MeshService, Started};
use sqlx::migrate::Migrator;
use tonic::service::Routes;

pub use config::CatalogConfig;
pub use error::{Error as CatalogError, RESOURCE_TYPE};

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The catalog service, as the mesh runs it.
#[derive(Debug)]
pub struct Catalog;

impl MeshService for Catalog {
    const NAME: &'static str = "catalog";
    const GRPC_SERVICE: &'static str = catalog_service_server::SERVICE_NAME;
    const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };
    type Config = CatalogConfig;

    fn listen(config: &CatalogConfig) -> SocketAddr {
        config.listen
    }

    fn database_url(config: &CatalogConfig) -> &str {
        &config.database_url
    }

    fn database_read_url(config: &CatalogConfig) -> Option<&str> {
        config.database_read_url.as_deref()
    }

    async fn start(mesh: &Mesh, _config: &CatalogConfig, pool: Pool) -> Result<Started, Error> {
        Ok(Started::routes(Routes::new(
            CatalogServiceServer::new(grpc::CatalogApi::new(store::Store::new(pool)))
                .max_decoding_message_size(mesh.config().server.max_message_bytes),
        )))
    }
}
