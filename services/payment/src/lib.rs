//! The payment service: idempotent charges and refunds over a simulated card processor.
//!
//! [`run`] opens the service's database (migrating it), then serves `PaymentService` with health
//! and reflection until shutdown. Rules live in [`domain`], the processor in [`processor`], the
//! idempotent use cases in `service`, every SQL statement in `store`, request validation in
//! [`convert`] and the rest of the protobuf conversion in `grpc`.

pub mod convert;
pub mod domain;
mod error;
mod grpc;
pub mod processor;
mod service;
mod store;

use std::future::Future;

use shopmesh::api::payment::v1::payment_service_server::PaymentServiceServer;
use shopmesh::mesh::config::{MeshConfig, PaymentConfig};
use shopmesh::mesh::db::{self, Migrations, Pool};
use shopmesh::mesh::readiness::Readiness;
use shopmesh::mesh::{Error, server};
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use error::Error as PaymentError;

/// The fully-qualified gRPC service name, also its health-check name.
pub const SERVICE_NAME: &str = "shopmesh.payment.v1.PaymentService";

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The service's embedded migrations.
pub const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

/// The service's routes over a migrated database.
pub fn routes(mesh: &MeshConfig, config: &PaymentConfig, pool: Pool) -> Routes {
    let processor = processor::Processor::new(
        config.payment_limit_minor,
        config.payment_currencies.clone(),
        config.payment_latency,
    );
    let payments = service::Payments::new(store::Store::new(pool), processor);
    Routes::new(
        PaymentServiceServer::new(grpc::PaymentApi::new(payments))
            .max_decoding_message_size(mesh.server.max_message_bytes),
    )
}

/// Serves on `listener` at once, NOT_SERVING until its database is migrated and answering,
/// until `shutdown` completes.
pub async fn run<F>(
    mesh: MeshConfig,
    config: PaymentConfig,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), Error>
where
    F: Future<Output = ()> + Send + 'static,
{
    let pool = db::connect(&config.database_url, &mesh)?;
    let readiness = Readiness::new(&config.database_url, pool.clone(), MIGRATIONS, &mesh)?;
    let routes = routes(&mesh, &config, pool.clone());
    let result = server::serve(&mesh, &[SERVICE_NAME], routes, listener, Some(readiness), shutdown).await;
    pool.close().await;
    result
}
