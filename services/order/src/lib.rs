//! The order service: validates the user, charges the payment, keeps the order's state machine
//! (PENDING_PAYMENT, then PAID or PAYMENT_DECLINED, then CANCELLED).
//!
//! [`run`] opens the service's database (migrating it) and lazy channels to the user and
//! payment services, then serves `OrderService` with health and reflection until shutdown.
//! Rules live in [`domain`], the use cases in `service`, calls to other services in `upstream`,
//! every SQL statement in `store`, request validation in [`convert`] and the rest of the
//! protobuf conversion in `grpc`.

pub mod convert;
pub mod domain;
mod error;
mod grpc;
pub mod reconciler;
mod service;
mod store;
mod upstream;

use std::future::Future;

use shopmesh::api::order::v1::order_service_server::OrderServiceServer;
use shopmesh::mesh::config::{MeshConfig, OrderConfig};
use shopmesh::mesh::db::{self, Migrations, Pool};
use shopmesh::mesh::readiness::Readiness;
use shopmesh::mesh::{Error, client, server};
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use error::Error as OrderError;

/// The fully-qualified gRPC service name, also its health-check name.
pub const SERVICE_NAME: &str = "shopmesh.order.v1.OrderService";

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The service's embedded migrations.
pub const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

/// The order use cases over `pool`, calling the services `config` names through the mesh's
/// client stack (deadlines, retries, balancing).
async fn orders(mesh: &MeshConfig, config: &OrderConfig, pool: Pool) -> Result<service::Orders, Error> {
    // With mTLS on, calls to user and payment present this service's certificate.
    let tls = shopmesh::mesh::tls::MeshTls::load(&mesh.security)?;
    let upstream = upstream::Upstream::new(
        client::channel_tls(&config.user_url, &mesh.client, tls.as_ref()).await?,
        client::channel_tls(&config.payment_url, &mesh.client, tls.as_ref()).await?,
    );
    Ok(service::Orders::new(store::Store::new(pool, config.reconcile.reconcile_after), upstream))
}

fn routes_of(mesh: &MeshConfig, orders: service::Orders) -> Routes {
    Routes::new(
        OrderServiceServer::new(grpc::OrderApi::new(orders))
            .max_decoding_message_size(mesh.server.max_message_bytes),
    )
}

/// The service's routes over a migrated database, calling the services `config` names through
/// the mesh's client stack. No reconciler runs: [`run`] starts one.
pub async fn routes(mesh: &MeshConfig, config: &OrderConfig, pool: Pool) -> Result<Routes, Error> {
    Ok(routes_of(mesh, orders(mesh, config, pool).await?))
}

/// Opens the dependency channels and serves on `listener` at once, NOT_SERVING until its
/// database is migrated and answering, until `shutdown`; the reconciler runs beside it for as
/// long.
pub async fn run<F>(
    mesh: MeshConfig,
    config: OrderConfig,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), Error>
where
    F: Future<Output = ()> + Send + 'static,
{
    let pool = db::connect(&config.database_url, &mesh)?;
    let readiness = Readiness::new(&config.database_url, pool.clone(), MIGRATIONS, &mesh)?;
    let orders = orders(&mesh, &config, pool.clone()).await?;
    // Stopping it at any point is safe: an attempt cut short leaves a lease that runs out.
    let reconciler =
        tokio::spawn(reconciler::Reconciler::new(orders.clone(), config.reconcile.clone()).run());
    let routes = routes_of(&mesh, orders);
    let result = server::serve(&mesh, &[SERVICE_NAME], routes, listener, Some(readiness), shutdown).await;
    reconciler.abort();
    pool.close().await;
    result
}
