//! Reads from a real streaming standby (`scripts/check-replicas` makes the primary and the
//! standby with `scripts/pg-topology` and sets the two variables below; without them this test
//! says so and does nothing). Through the user service: a read-only call reads the replica
//! (proved by pausing its replay: a fresh write is missing from ListUsers), GetUser of that
//! write still finds it (the NOT_FOUND fallback), a caller passing its `shopmesh-written-at`
//! token reads its write, a replica lagging past `--max-replica-lag` is skipped, and a replica
//! whose connections die or that is not there at all never fails a call.

use std::time::Duration;

use shopmesh::api::user::v1::user_service_client::UserServiceClient;
use shopmesh::api::user::v1::{CreateUserRequest, GetUserRequest, ListUsersRequest};
use shopmesh::mesh::testing;
use shopmesh_user::{User, UserConfig};
use sqlx::{AssertSqlSafe, Connection as _, Executor as _};
use tonic::transport::Channel;

/// The topology's primary, as the services' role (`.../postgres`).
const PRIMARY_ENV: &str = "SHOPMESH_TEST_PRIMARY_URL";
/// Its streaming standby, the same role.
const STANDBY_ENV: &str = "SHOPMESH_TEST_STANDBY_URL";

fn on_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{name}")
}

async fn execute(url: &str, sql: &str) {
    let mut conn = sqlx::postgres::PgConnection::connect(url).await.expect("connect");
    conn.execute(AssertSqlSafe(sql.to_owned())).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

/// Polls `check` every 100 ms until it holds, for at most `within` (a bound, not a speed).
async fn until<F: AsyncFnMut() -> bool>(within: Duration, what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn spawn(
    primary: &str,
    read: &str,
    max_lag: Duration,
) -> (testing::Spawned, UserServiceClient<Channel>) {
    let mut config = UserConfig::new(testing::ANY_PORT, primary);
    config.database_read_url = Some(read.to_owned());
    config.cache_ttl = Duration::ZERO;
    let mesh = testing::mesh(shopmesh::mesh::config::MeshConfig {
        max_replica_lag: max_lag,
        ..testing::mesh_config()
    });
    let service = testing::spawn_service::<User>(&mesh, config).await;
    let client = UserServiceClient::connect(service.url()).await.expect("connect");
    (service, client)
}

async fn emails(client: &mut UserServiceClient<Channel>, token: Option<&str>) -> Vec<String> {
    let mut request = tonic::Request::new(ListUsersRequest { page_size: 1000, page_token: String::new() });
    if let Some(token) = token {
        request.metadata_mut().insert("shopmesh-written-at", token.parse().expect("token"));
    }
    let page = client.list_users(request).await.expect("ListUsers never fails for a replica's sake");
    page.into_inner().users.into_iter().map(|u| u.email).collect()
}

#[tokio::test]
async fn reads_go_to_a_usable_replica_and_fall_back_to_the_primary() {
    let (Ok(primary), Ok(standby)) = (std::env::var(PRIMARY_ENV), std::env::var(STANDBY_ENV)) else {
        eprintln!("{PRIMARY_ENV} and {STANDBY_ENV} unset: run scripts/check-replicas");
        return;
    };
    let name = format!("shopmesh_t_replicas_{}", shopmesh::mesh::ids::new_id().replace('-', ""));
    execute(&primary, &format!("CREATE DATABASE \"{name}\"")).await;
    let (primary_db, standby_db) = (on_database(&primary, &name), on_database(&standby, &name));
    until(Duration::from_secs(10), "the database reaches the standby", async || {
        sqlx::postgres::PgConnection::connect(&standby_db).await.is_ok()
    })
    .await;

    // A generous bound: the paused replica stays in use while this test looks at it.
    let (service, mut client) = spawn(&primary_db, &standby_db, Duration::from_secs(120)).await;
    let create = async |client: &mut UserServiceClient<Channel>, email: &str| {
        let request =
            CreateUserRequest { email: email.into(), display_name: "R".into(), request_id: String::new() };
        let response = client.create_user(request).await.expect("create");
        let token =
            response.metadata().get("shopmesh-written-at").map(|v| v.to_str().expect("ascii").to_owned());
        (response.into_inner().id, token.expect("a write's answer carries its token"))
    };
    create(&mut client, "before@example.com").await;
    until(Duration::from_secs(10), "the first user is read from the replica", async || {
        emails(&mut client, None).await.contains(&"before@example.com".to_owned())
    })
    .await;

    execute(&standby_db, "SELECT pg_wal_replay_pause()").await;
    let (fresh, token) = create(&mut client, "fresh@example.com").await;
    let listed = emails(&mut client, None).await;
    assert_eq!(listed, ["before@example.com"], "ListUsers read the paused replica, which lacks the new user");
    let got = client.get_user(GetUserRequest { id: fresh.clone() }).await.expect("found on the primary");
    assert_eq!(got.into_inner().email, "fresh@example.com", "a miss on the replica is asked of the primary");
    assert!(
        emails(&mut client, Some(&token)).await.contains(&"fresh@example.com".to_owned()),
        "a caller passing its write's token reads what it wrote"
    );

    // The replica's connections die under it: the read goes to the primary, nothing fails.
    let mut standby_admin = sqlx::postgres::PgConnection::connect(&standby_db).await.expect("standby");
    standby_admin
        .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND usename = current_user")
        .await
        .expect("terminate the service's replica connections");
    let _ = standby_admin.close().await;
    assert!(
        emails(&mut client, None).await.contains(&"fresh@example.com".to_owned()),
        "a read the replica failed was answered by the primary"
    );

    // Lagging past --max-replica-lag (1 s here, while replay stays paused): skipped.
    let (lagging, mut strict) = spawn(&primary_db, &standby_db, Duration::from_secs(1)).await;
    until(Duration::from_secs(10), "a lagging replica is left for the primary", async || {
        emails(&mut strict, None).await.contains(&"fresh@example.com".to_owned())
    })
    .await;

    // No replica there at all (nothing listens on port 1): every read on the primary.
    let gone = on_database("postgres://shopmesh:shopmesh@127.0.0.1:1/x", &name);
    let (down, mut orphan) = spawn(&primary_db, &gone, Duration::from_secs(5)).await;
    for _ in 0..5 {
        assert!(emails(&mut orphan, None).await.contains(&"fresh@example.com".to_owned()));
        orphan.get_user(GetUserRequest { id: fresh.clone() }).await.expect("GetUser with the replica down");
    }

    execute(&standby_db, "SELECT pg_wal_replay_resume()").await;
    for spawned in [service, lagging, down] {
        spawned.stop().await.expect("clean shutdown");
    }
    execute(&primary, &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
}
