//! The catalog service: the products that can be ordered, each named by its SKU, and their
//! prices (`shopmesh.catalog.v1.CatalogService`, port 50054 by default).
//!
//! [`run`] opens the service's own database (migrating it), then serves `CatalogService` with
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

use std::future::Future;

use shopmesh::api::catalog::v1::catalog_service_server::CatalogServiceServer;
use shopmesh::mesh::config::MeshConfig;
use shopmesh::mesh::db::{self, Migrations, Pool};
use shopmesh::mesh::readiness::Readiness;
use shopmesh::mesh::{Error, server};
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use config::CatalogConfig;
pub use error::{Error as CatalogError, RESOURCE_TYPE};

/// The fully-qualified gRPC service name, also its health-check name.
pub const SERVICE_NAME: &str = "shopmesh.catalog.v1.CatalogService";

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The service's embedded migrations.
pub const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

/// The service's routes over a migrated database.
pub fn routes(mesh: &MeshConfig, pool: Pool) -> Routes {
    Routes::new(
        CatalogServiceServer::new(grpc::CatalogApi::new(store::Store::new(pool)))
            .max_decoding_message_size(mesh.server.max_message_bytes),
    )
}

/// Serves on `listener` at once, NOT_SERVING until its database is migrated and answering,
/// until `shutdown` completes.
pub async fn run<F>(
    mesh: MeshConfig,
    config: CatalogConfig,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), Error>
where
    F: Future<Output = ()> + Send + 'static,
{
    let pool = db::connect(&config.database_url, &mesh)?;
    let readiness = Readiness::new(&config.database_url, pool.clone(), MIGRATIONS, &mesh)?;
    let result = server::serve(
        &mesh,
        &[SERVICE_NAME],
        routes(&mesh, pool.clone()),
        listener,
        Some(readiness),
        shutdown,
    )
    .await;
    pool.close().await;
    result
}
