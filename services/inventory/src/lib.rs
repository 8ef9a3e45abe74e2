//! The inventory service: stock on hand per SKU (`shopmesh.inventory.v1.InventoryService`,
//! port 50055 by default), allocated to paid orders from the order service's events.
//!
//! [`Inventory`] is the service as the mesh runs it: the runtime opens its database
//! (migrating it), and beside `InventoryService` run the consumer of the order service's
//! events (`events`: OrderPaid allocates every line or backorders the order with the reason,
//! OrderCancelled returns what was allocated; each once, by the inbox) and the relay of its
//! own outbox (StockAllocated, OrderBackordered, StockReleased). Stock is never negative: an
//! allocation is a conditional update per line. SetStock asks the catalog (`catalog`) that the
//! SKU exists. Rules live in [`domain`], SQL in `store`,
//! validation in [`convert`], statuses in `error`, protobuf conversion in `grpc`.

mod catalog;
pub mod config;
pub mod convert;
pub mod domain;
mod error;
mod events;
mod grpc;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use shopmesh::api::inventory::v1::inventory_service_server::{self, InventoryServiceServer};
use shopmesh::mesh::Error;
use shopmesh::mesh::db::{Migrations, Pool};
use shopmesh::mesh::events::{self as mesh_events, Events, Subscription};
use shopmesh::mesh::service::{Mesh, MeshService, Started};
use sqlx::migrate::Migrator;
use tonic::service::Routes;

pub use config::InventoryConfig;
pub use error::Error as InventoryError;

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The inventory service, as the mesh runs it.
#[derive(Debug)]
pub struct Inventory;

impl MeshService for Inventory {
    const NAME: &'static str = "inventory";
    const GRPC_SERVICE: &'static str = inventory_service_server::SERVICE_NAME;
    const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };
    type Config = InventoryConfig;
    const UPSTREAMS: &'static [shopmesh::mesh::upstream::Upstream] = catalog::UPSTREAMS;
    const EVENTS: Events = Events {
        publishes: Some(mesh_events::INVENTORY),
        consumes: &[Subscription { durable: store::ORDER_CONSUMER, stream: mesh_events::ORDER }],
    };

    fn listen(config: &InventoryConfig) -> SocketAddr {
        config.listen
    }

    fn database_url(config: &InventoryConfig) -> &str {
        &config.database_url
    }

    fn database_read_url(config: &InventoryConfig) -> Option<&str> {
        config.database_read_url.as_deref()
    }

    fn describe_metrics() {
        mesh_events::consumer::describe_metrics();
    }

    async fn start(mesh: &Mesh, _config: &InventoryConfig, pool: Pool) -> Result<Started, Error> {
        let broker = mesh.broker(Self::NAME)?.clone();
        let catalog = catalog::Catalog::new(mesh.upstream_channel(Self::NAME, &catalog::CATALOG).await?);
        let store = store::Store::new(pool);
        let relay = store.relay(broker.clone());
        let handler = Arc::new(events::Orders::new(store.clone()));
        let consumer = broker.consuming(Self::EVENTS.consumes[0], handler);
        let routes = Routes::new(
            InventoryServiceServer::new(grpc::InventoryApi::new(store, catalog))
                .max_decoding_message_size(mesh.config().server.max_message_bytes),
        );
        Ok(Started { routes, beside: vec![Box::pin(relay.run()), consumer] })
    }
}
