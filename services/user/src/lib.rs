//! The user service: accounts that place orders.
//!
//! [`run`] opens the service's database (migrating it), then serves `UserService` with health
//! and reflection until shutdown. The rules live in [`domain`], every SQL statement in `store`,
//! the validation of each request in [`convert`], and the rest of the protobuf conversion in
//! `grpc`.

pub mod convert;
pub mod domain;
mod error;
mod grpc;
mod store;

use std::future::Future;

use shopmesh::api::user::v1::user_service_server::UserServiceServer;
use shopmesh::mesh::config::{MeshConfig, UserConfig};
use shopmesh::mesh::db::{self, Migrations, Pool};
use shopmesh::mesh::readiness::Readiness;
use shopmesh::mesh::{Error, server};
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use error::Error as UserError;

/// The fully-qualified gRPC service name, also its health-check name.
pub const SERVICE_NAME: &str = "shopmesh.user.v1.UserService";

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The service's embedded migrations.
pub const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };

/// The service's routes over a migrated database.
pub fn routes(mesh: &MeshConfig, pool: Pool) -> Routes {
    Routes::new(
        UserServiceServer::new(grpc::UserApi::new(store::Store::new(pool)))
            .max_decoding_message_size(mesh.server.max_message_bytes),
    )
}

/// Serves on `listener` at once, NOT_SERVING until its database is migrated and answering,
/// until `shutdown` completes.
pub async fn run<F>(
    mesh: MeshConfig,
    config: UserConfig,
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
