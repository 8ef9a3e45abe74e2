//! The payment service: idempotent charges and refunds over a simulated card processor.
//!
//! [`Payment`] is the service as the mesh runs it (its settings in [`PaymentConfig`]); the
//! runtime opens its database (migrating it), then serves `PaymentService` with health and
//! reflection until shutdown. Rules live in [`domain`], the processor in [`processor`], the
//! idempotent use cases in `service`, every SQL statement in `store`, request validation in
//! [`convert`] and the rest of the protobuf conversion in `grpc`.

mod config;
pub mod convert;
pub mod domain;
mod error;
mod grpc;
pub mod processor;
mod service;
mod store;

use std::net::SocketAddr;

use shopmesh::api::payment::v1::payment_service_server::{self, PaymentServiceServer};
use shopmesh::mesh::Error;
use shopmesh::mesh::db::{self, Migrations, Pool};
use shopmesh::mesh::service::{Mesh, MeshService, Started};
use sqlx::migrate::Migrator;
use tonic::service::Routes;

pub use config::PaymentConfig;
pub use error::Error as PaymentError;

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The service's routes over a migrated database, charging through a simulated processor that
/// keeps its ledger in `ledger` (see [`processor::Ledger`]).
fn routes(mesh: &Mesh, config: &PaymentConfig, pool: Pool, ledger: Pool) -> Routes {
    let processor = processor::Processor::new(
        config.payment_limit_minor,
        config.payment_currencies.clone(),
        config.payment_latency,
        processor::Ledger::new(ledger),
    );
    let store = store::Store::new(pool, config.payment_processing_lease);
    let payments = service::Payments::new(store, processor);
    Routes::new(
        PaymentServiceServer::new(grpc::PaymentApi::new(payments))
            .max_decoding_message_size(mesh.config().server.max_message_bytes),
    )
}

/// The payment service, as the mesh runs it.
#[derive(Debug)]
pub struct Payment;

impl MeshService for Payment {
    const NAME: &'static str = "payment";
    const GRPC_SERVICE: &'static str = payment_service_server::SERVICE_NAME;
    const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };
    type Config = PaymentConfig;

    fn listen(config: &PaymentConfig) -> SocketAddr {
        config.listen
    }

    fn database_url(config: &PaymentConfig) -> &str {
        &config.database_url
    }

    fn database_read_url(config: &PaymentConfig) -> Option<&str> {
        config.database_read_url.as_deref()
    }

    /// Opens (lazily) the simulated processor's ledger beside the service's own database.
    async fn start(mesh: &Mesh, config: &PaymentConfig, pool: Pool) -> Result<Started, Error> {
        let ledger = db::connect(&config.processor_ledger_url, mesh.config())?.named("processor");
        Ok(Started::routes(routes(mesh, config, pool, ledger)))
    }
}
