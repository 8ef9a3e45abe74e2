//! The user service: accounts that place orders.
//!
//! [`User`] is the service as the mesh runs it (its settings in [`UserConfig`]); the runtime
//! opens its database (migrating it), then serves `UserService` with health and reflection
//! until shutdown. The rules live in [`domain`], every SQL statement in `store`,
//! the validation of each request in [`convert`], and the rest of the protobuf conversion in
//! `grpc`.

mod config;
pub mod convert;
pub mod domain;
mod error;
mod grpc;
mod store;

use std::net::SocketAddr;

use shopmesh::api::user::v1::user_service_server::{self, UserServiceServer};
use shopmesh::mesh::Error;
use shopmesh::mesh::db::{Migrations, Pool};
use shopmesh::mesh::service::{Mesh, MeshService, Started};
use sqlx::migrate::Migrator;
use tonic::service::Routes;

pub use config::UserConfig;
pub use error::Error as UserError;

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The user service, as the mesh runs it.
#[derive(Debug)]
pub struct User;

impl MeshService for User {
    const NAME: &'static str = "user";
    const GRPC_SERVICE: &'static str = user_service_server::SERVICE_NAME;
    const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };
    type Config = UserConfig;

    fn listen(config: &UserConfig) -> SocketAddr {
        config.listen
    }

    fn database_url(config: &UserConfig) -> &str {
        &config.database_url
    }

    fn database_read_url(config: &UserConfig) -> Option<&str> {
        config.database_read_url.as_deref()
    }

    /// Its routes over the database, answering GetUser from memory for `--user-cache-ttl`.
    async fn start(mesh: &Mesh, config: &UserConfig, pool: Pool) -> Result<Started, Error> {
        let store = store::Store::new(pool).with_cache(config.cache_ttl);
        Ok(Started::routes(Routes::new(
            UserServiceServer::new(grpc::UserApi::new(store))
                .max_decoding_message_size(mesh.config().server.max_message_bytes),
        )))
    }
}
