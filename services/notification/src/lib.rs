//! The notification service: the messages sent to users about their orders
//! (`shopmesh.notification.v1.NotificationService`, port 50056 by default).
//!
//! [`Notification`] is the service as the mesh runs it: beside its read-only API run two
//! consumers (`events`): of the inventory's events (StockAllocated → CONFIRMED,
//! OrderBackordered → BACKORDERED) and of the order service's (OrderCancelled → CANCELLED).
//! Each message is sent once per order and kind through a simulated mail provider that keeps
//! its own ledger (`mailer`, keyed by order and kind) and recorded with the event's inbox row.
//! Kinds and texts live in [`domain`], SQL in `store`, validation in [`convert`], statuses in
//! `error`, protobuf conversion in `grpc`.

pub mod config;
pub mod convert;
pub mod domain;
mod error;
mod events;
mod grpc;
mod mailer;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use shopmesh::api::notification::v1::notification_service_server::{self, NotificationServiceServer};
use shopmesh::mesh::Error;
use shopmesh::mesh::db::{Migrations, Pool};
use shopmesh::mesh::events::{self as mesh_events, Events, Subscription};
use shopmesh::mesh::service::{Mesh, MeshService, Started};
use sqlx::migrate::Migrator;
use tonic::service::Routes;

pub use config::NotificationConfig;
pub use error::Error as NotificationError;

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The notification service, as the mesh runs it.
#[derive(Debug)]
pub struct Notification;

impl MeshService for Notification {
    const NAME: &'static str = "notification";
    const GRPC_SERVICE: &'static str = notification_service_server::SERVICE_NAME;
    const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };
    type Config = NotificationConfig;
    const EVENTS: Events = Events {
        publishes: None,
        consumes: &[
            Subscription { durable: events::INVENTORY_CONSUMER, stream: mesh_events::INVENTORY },
            Subscription { durable: events::ORDER_CONSUMER, stream: mesh_events::ORDER },
        ],
    };

    fn listen(config: &NotificationConfig) -> SocketAddr {
        config.listen
    }

    fn database_url(config: &NotificationConfig) -> &str {
        &config.database_url
    }

    fn database_read_url(config: &NotificationConfig) -> Option<&str> {
        config.database_read_url.as_deref()
    }

    fn describe_metrics() {
        mesh_events::consumer::describe_metrics();
    }

    async fn start(mesh: &Mesh, _config: &NotificationConfig, pool: Pool) -> Result<Started, Error> {
        let broker = mesh.broker(Self::NAME)?;
        let store = store::Store::new(pool);
        let mailer = mailer::Mailer::new(store.pool().clone());
        let beside = Self::EVENTS
            .consumes
            .iter()
            .map(|subscription| {
                let notifier = events::Notifier::new(subscription.durable, store.clone(), mailer.clone());
                broker.consuming(*subscription, Arc::new(notifier))
            })
            .collect();
        let routes = Routes::new(
            NotificationServiceServer::new(grpc::NotificationApi::new(store))
                .max_decoding_message_size(mesh.config().server.max_message_bytes),
        );
        Ok(Started { routes, beside })
    }
}
