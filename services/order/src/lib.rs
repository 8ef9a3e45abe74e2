//! The order service: validates the user, prices every line from the catalog, charges the
//! payment, keeps the order's state machine
//! (PENDING_PAYMENT, then PAID or PAYMENT_DECLINED, then CANCELLED).
//!
//! [`Order`] is the service as the mesh runs it (its settings in [`OrderConfig`]): the runtime
//! opens its database (migrating it), [`Order::start`] opens lazy channels to the services it
//! declares in `upstream` (user, catalog, payment; found in the mesh's upstream table) and
//! starts the reconciler, and `OrderService` is served with health and
//! reflection until shutdown.
//! Paid and cancelled orders are published as events through the order's outbox (`events`,
//! relayed beside the routes), and the inventory's events set each paid order's fulfilment.
//! Rules live in [`domain`], the use cases in `service`, calls to other services in `upstream`,
//! every SQL statement in `store`, request validation in [`convert`] and the rest of the
//! protobuf conversion in `grpc`.

mod config;
pub mod convert;
pub mod domain;
mod error;
pub mod events;
mod grpc;
mod in_flight;
pub mod reconciler;
mod service;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod upstream;

use std::net::SocketAddr;

use shopmesh::api::order::v1::order_service_server::{self, OrderServiceServer};
use shopmesh::mesh::Error;
use std::sync::Arc;

use shopmesh::mesh::db::{Migrations, Pool};
use shopmesh::mesh::events::{self as mesh_events, Events, Subscription};
use shopmesh::mesh::service::{Mesh, MeshService, Started};
use sqlx::migrate::Migrator;
use tonic::service::Routes;

pub use config::{OrderConfig, ReconcileConfig};
pub use error::Error as OrderError;

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The order use cases over `pool`, calling the services of the mesh's upstream table through
/// its client stack (deadlines, retries, balancing; mutual TLS when it is on).
async fn orders(mesh: &Mesh, config: &OrderConfig, pool: Pool) -> Result<service::Orders, Error> {
    let own = <Order as MeshService>::NAME;
    let upstream =
        upstream::Upstream::connect(mesh, own, config.catalog_cache_ttl, config.user_check_ttl).await?;
    Ok(service::Orders::new(store::Store::new(pool, config.reconcile.reconcile_after), upstream))
}

/// The order service, as the mesh runs it.
#[derive(Debug)]
pub struct Order;

impl MeshService for Order {
    const NAME: &'static str = "order";
    const GRPC_SERVICE: &'static str = order_service_server::SERVICE_NAME;
    const MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE, postgres: &POSTGRES };
    type Config = OrderConfig;
    const UPSTREAMS: &'static [shopmesh::mesh::upstream::Upstream] = upstream::UPSTREAMS;
    const EVENTS: Events = Events {
        publishes: Some(mesh_events::ORDER),
        consumes: &[Subscription { durable: store::FULFILMENT_CONSUMER, stream: mesh_events::INVENTORY }],
    };

    fn listen(config: &OrderConfig) -> SocketAddr {
        config.listen
    }

    fn database_url(config: &OrderConfig) -> &str {
        &config.database_url
    }

    fn database_read_url(config: &OrderConfig) -> Option<&str> {
        config.database_read_url.as_deref()
    }

    fn describe_metrics() {
        mesh_events::consumer::describe_metrics();
        metrics::describe_gauge!(
            "shopmesh_order_pending_orders",
            "Orders in PENDING_PAYMENT: their charge's outcome is not known yet."
        );
        metrics::describe_gauge!(
            "shopmesh_order_oldest_pending_age_seconds",
            metrics::Unit::Seconds,
            "Age of the oldest PENDING_PAYMENT order; alert when it grows past the reconciler's backoff."
        );
        metrics::describe_counter!(
            "shopmesh_order_reconcile_attempts_total",
            "Charges the reconciler re-sent, by outcome (paid, declined, refunded, unknown)."
        );
        metrics::describe_counter!(
            "shopmesh_order_payment_mismatches_total",
            "PAID orders the reconciler's audit found whose payment is not SUCCEEDED, by the payment's state \
             (refunded, declined, processing, missing); each is logged, and found again every sweep until fixed."
        );
    }

    /// Opens the dependency channels; the reconciler runs beside the routes for as long as
    /// they are served (stopping it at any point is safe: an attempt cut short leaves a lease
    /// that runs out).
    async fn start(mesh: &Mesh, config: &OrderConfig, pool: Pool) -> Result<Started, Error> {
        let broker = mesh.broker(Self::NAME)?.clone();
        let orders = orders(mesh, config, pool).await?;
        let store = orders.store().clone();
        let relay = store.outbox().relay(store.pool().clone(), broker.clone(), mesh_events::ORDER);
        let consumer = broker.consuming(Self::EVENTS.consumes[0], Arc::new(events::Fulfilments::new(store)));
        let reconciler = reconciler::Reconciler::new(orders.clone(), config.reconcile.clone());
        let routes = Routes::new(
            OrderServiceServer::new(grpc::OrderApi::new(orders))
                .max_decoding_message_size(mesh.config().server.max_message_bytes),
        );
        Ok(Started { routes, beside: vec![Box::pin(reconciler.run()), Box::pin(relay.run()), consumer] })
    }
}
