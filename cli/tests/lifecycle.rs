//! A service's lifecycle as probes and balancers see it: NOT_SERVING until its own database is
//! migrated and answering, readiness that follows that database and never its callees, a
//! liveness name that never depends on the database, and a drain on shutdown that keeps
//! serving while announcing NOT_SERVING.

use std::time::Duration;

use shopmesh::api::order::v1::{CreateOrderRequest, order_service_client::OrderServiceClient};
use shopmesh::api::user::v1::{ListUsersRequest, user_service_client::UserServiceClient};
use shopmesh::mesh::server::LIVENESS;
use shopmesh::mesh::service::MeshService as _;
use shopmesh::mesh::testing::{self, Backend};
use shopmesh::mesh::upstream::Upstreams;
use shopmesh::mesh::{db, health};
use shopmesh_order::{Order, OrderConfig};
use shopmesh_user::{User, UserConfig};
use tokio::net::TcpListener;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const USER: &str = shopmesh_user::User::GRPC_SERVICE;

async fn status(url: &str, service: &str) -> ServingStatus {
    health::check(url, service, Duration::from_secs(2)).await.expect("health answers")
}

/// Polls until `service` at `url` reports `want`, for at most 10 s.
async fn wait_for(url: &str, service: &str, want: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status(url, service).await != want {
        assert!(tokio::time::Instant::now() < deadline, "{service:?} at {url} never became {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn list() -> ListUsersRequest {
    ListUsersRequest { page_size: 10, page_token: String::new() }
}

#[tokio::test]
async fn not_serving_until_the_database_is_migrated() {
    for backend in testing::backends() {
        let test_db = testing::database(backend, "user").await;
        let mut mesh = testing::mesh_config();
        // Another process owns migrating (the Helm hook's `shopmesh migrate`).
        mesh.db_migrate = false;
        let config = UserConfig::new("127.0.0.1:0".parse().expect("addr"), test_db.url.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let user = testing::start_service_on::<User>(listener, &testing::mesh(mesh.clone()), config);
        let url = user.url();
        // Listening at once, alive, but not ready; calls are refused with a status that says so.
        assert!(health::wait_serving(&url, LIVENESS, Duration::from_secs(10)).await, "{backend:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(status(&url, "").await, ServingStatus::NotServing, "{backend:?}");
        assert_eq!(status(&url, USER).await, ServingStatus::NotServing, "{backend:?}");
        let mut users = UserServiceClient::connect(url.clone()).await.expect("connect");
        let refused = users.list_users(list()).await.expect_err("not ready");
        assert_eq!(refused.code(), Code::Unavailable, "{backend:?}: {refused:?}");

        // `shopmesh migrate` does exactly this.
        let pool = db::open(&test_db.url, &mesh, shopmesh_user::User::MIGRATIONS).await.expect("migrate");
        pool.close().await;
        wait_for(&url, USER, ServingStatus::Serving).await;
        wait_for(&url, "", ServingStatus::Serving).await;
        assert!(users.list_users(list()).await.expect("ready").into_inner().users.is_empty());

        user.stop().await.expect("stops");
        test_db.drop_database().await;
    }
}

#[tokio::test]
async fn readiness_follows_the_database_and_liveness_does_not() {
    // Only PostgreSQL can be taken away from a running service (a SQLite file stays open).
    if !testing::backends().contains(&Backend::Postgres) {
        return;
    }
    let test_db = testing::database(Backend::Postgres, "user").await;
    let config = UserConfig::new("127.0.0.1:0".parse().expect("addr"), test_db.url.clone());
    let user = testing::spawn_service::<User>(&testing::mesh(testing::mesh_config()), config).await;
    let url = user.url();
    assert_eq!(status(&url, "").await, ServingStatus::Serving);

    // The database disappears (its connections are terminated with it).
    let name = test_db.url.rsplit('/').next().expect("name").to_owned();
    let admin = std::env::var(testing::POSTGRES_ENV).expect("PostgreSQL URL");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.expect("admin");
    sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(format!("DROP DATABASE \"{name}\" WITH (FORCE)")))
        .await
        .expect("drop");
    wait_for(&url, USER, ServingStatus::NotServing).await;
    wait_for(&url, "", ServingStatus::NotServing).await;
    assert_eq!(status(&url, LIVENESS).await, ServingStatus::Serving, "liveness must not follow the database");

    // It comes back: so does readiness.
    sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .await
        .expect("create");
    wait_for(&url, USER, ServingStatus::Serving).await;

    user.stop().await.expect("stops");
    test_db.drop_database().await;
}

#[tokio::test]
async fn readiness_never_follows_callees() {
    for backend in testing::backends() {
        let test_db = testing::database(backend, "order").await;
        // Nothing listens where user, catalog and payment should be.
        let gone = |_| async {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            format!("http://{}", l.local_addr().expect("addr"))
        };
        let (user_url, catalog_url, payment_url) = (gone(0).await, gone(1).await, gone(2).await);
        let config = OrderConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            database_url: test_db.url.clone(),
            database_read_url: None,
            catalog_cache_ttl: Duration::from_secs(5),
            user_check_ttl: Duration::from_secs(1),
            reconcile: Default::default(),
        };
        // spawn() returns only once the order service is SERVING: its callees do not matter.
        let order = testing::spawn_service::<Order>(
            &testing::mesh(testing::mesh_config()).with_upstreams(
                Upstreams::new().at("user", user_url).at("catalog", catalog_url).at("payment", payment_url),
            ),
            config,
        )
        .await;
        let mut orders = OrderServiceClient::connect(order.url()).await.expect("connect");
        let req = CreateOrderRequest {
            user_id: shopmesh::mesh::ids::new_id(),
            line_items: vec![shopmesh::api::order::v1::LineItem {
                sku: "BOOK-42".into(),
                quantity: 1,
                unit_price: Some(shopmesh::api::common::v1::Money {
                    currency_code: "USD".into(),
                    amount_minor: 1,
                }),
            }],
            request_id: String::new(),
        };
        let err = orders.create_order(req).await.expect_err("user and catalog are down");
        assert_eq!(err.code(), Code::Unavailable, "{backend:?}: {err:?}");
        assert_eq!(status(&order.url(), "").await, ServingStatus::Serving, "{backend:?}");
        order.stop().await.expect("stops");
        test_db.drop_database().await;
    }
}

#[tokio::test]
async fn on_shutdown_it_announces_not_serving_and_keeps_serving_through_the_drain() {
    let test_db = testing::database(Backend::Sqlite, "user").await;
    let mut mesh = testing::mesh_config();
    mesh.drain_delay = Duration::from_millis(600);
    let config = UserConfig::new("127.0.0.1:0".parse().expect("addr"), test_db.url.clone());
    let user = testing::spawn_service::<User>(&testing::mesh(mesh), config).await;
    let url = user.url();
    let mut users = UserServiceClient::connect(url.clone()).await.expect("connect");

    let started = tokio::time::Instant::now();
    let stopping = tokio::spawn(user.stop());
    wait_for(&url, USER, ServingStatus::NotServing).await;
    wait_for(&url, "", ServingStatus::NotServing).await;
    assert_eq!(status(&url, LIVENESS).await, ServingStatus::Serving);
    // Still serving calls during the drain.
    users.list_users(list()).await.expect("served while draining");
    stopping.await.expect("join").expect("stops cleanly");
    assert!(started.elapsed() >= Duration::from_millis(600), "stopped before the drain delay");
    test_db.drop_database().await;
}

/// A rollback: an older binary meets the schema of a newer release, which applied an additive
/// migration this binary does not know. It migrates (nothing to do), serves, and so does a
/// replica that waits for `shopmesh migrate` instead; sqlx's default would refuse with
/// "migration … was previously applied but is missing" and keep the service NOT_SERVING.
#[tokio::test]
async fn an_older_binary_serves_a_schema_with_a_newer_additive_migration() {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    for backend in testing::backends() {
        let test_db = testing::database(backend, "rollback").await;
        let mesh = testing::mesh_config();
        let known = match backend {
            Backend::Sqlite => User::MIGRATIONS.sqlite,
            Backend::Postgres => User::MIGRATIONS.postgres,
        };
        // The newer release: every migration this binary has, and one more (expand: a new table).
        let mut newer: Vec<Migration> = known.iter().cloned().collect();
        newer.push(Migration::new(
            99_990_101_000_000,
            "newer release's table".into(),
            MigrationType::Simple,
            sqlx::SqlSafeStr::into_sql_str("CREATE TABLE newer_release_table (id TEXT PRIMARY KEY)"),
            false,
        ));
        let pool = db::connect(&test_db.url, &mesh).expect("pool");
        Migrator::with_migrations(newer).run(&*pool).await.expect("the newer release migrates");
        pool.close().await;

        // `shopmesh migrate` of the older release (the chart's hook Job) succeeds.
        let pool = db::open(&test_db.url, &mesh, User::MIGRATIONS).await.expect("older migrate");
        pool.close().await;
        // The older service, migrating on start (the chart's bundled PostgreSQL) or not, serves.
        for migrate in [true, false] {
            let mut mesh = mesh.clone();
            mesh.db_migrate = migrate;
            let config = UserConfig::new("127.0.0.1:0".parse().expect("addr"), test_db.url.clone());
            let user = testing::spawn_service::<User>(&testing::mesh(mesh), config).await;
            let url = user.url();
            wait_for(&url, USER, ServingStatus::Serving).await;
            let mut users = UserServiceClient::connect(url.clone()).await.expect("connect");
            let listed = users.list_users(list()).await;
            assert!(listed.is_ok(), "{backend:?}, migrate {migrate}: {listed:?}");
            user.stop().await.expect("stops");
        }
        test_db.drop_database().await;
    }
}
