//! The user service over real gRPC on 127.0.0.1:0, on SQLite and (when configured) PostgreSQL.

use shopmesh::api::user::v1::{
    CreateUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest, User,
    user_service_client::UserServiceClient,
};
use shopmesh::mesh::service::MeshService as _;
use shopmesh::mesh::testing::{self, Backend, Spawned, TestDb, field_violations, precondition};
use shopmesh_user::UserConfig;
use tonic::Code;
use tonic::transport::Channel;

struct Running {
    service: Spawned,
    db: TestDb,
    client: UserServiceClient<Channel>,
}

async fn start(backend: Backend) -> Running {
    start_with(backend, UserConfig::new("127.0.0.1:0".parse().expect("addr"), String::new())).await
}

async fn start_with(backend: Backend, mut config: UserConfig) -> Running {
    let db = testing::database(backend, "user").await;
    config.database_url = db.url.clone();
    let mesh = testing::mesh(testing::mesh_config());
    let service = testing::spawn_service::<shopmesh_user::User>(&mesh, config).await;
    let client = UserServiceClient::connect(service.url()).await.expect("connect");
    Running { service, db, client }
}

impl Running {
    async fn stop(self) {
        self.service.stop().await.expect("clean shutdown");
        self.db.drop_database().await;
    }

    async fn create(&mut self, email: &str, name: &str, request_id: &str) -> Result<User, tonic::Status> {
        self.client
            .create_user(CreateUserRequest {
                email: email.into(),
                display_name: name.into(),
                request_id: request_id.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn count(&mut self) -> usize {
        let page = ListUsersRequest { page_size: 1000, page_token: String::new() };
        self.client.list_users(page).await.expect("list").into_inner().users.len()
    }
}

#[tokio::test]
async fn create_get_update() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let user = t.create("Ada@Example.com", " Ada Lovelace ", "").await.expect("create");
        assert!(shopmesh::mesh::ids::is_id(&user.id), "{backend:?}: id {}", user.id);
        assert_eq!(user.email, "ada@example.com", "{backend:?}");
        assert_eq!(user.display_name, "Ada Lovelace", "{backend:?}");
        assert!(user.active, "{backend:?}: new users are active");
        assert!(user.create_time.is_some() && user.update_time.is_some());

        let got = t.client.get_user(GetUserRequest { id: user.id.clone() }).await.expect("get").into_inner();
        assert_eq!(got, user, "{backend:?}");

        let deactivate = UpdateUserRequest {
            user: Some(User { id: user.id.clone(), active: false, ..Default::default() }),
            update_mask: Some(prost_types_mask(&["active"])),
        };
        let updated = t.client.update_user(deactivate).await.expect("update").into_inner();
        assert!(!updated.active, "{backend:?}");
        assert_eq!(updated.display_name, "Ada Lovelace", "{backend:?}: unmasked field kept");

        let rename = UpdateUserRequest {
            user: Some(User { id: user.id.clone(), display_name: "Countess".into(), ..Default::default() }),
            update_mask: None,
        };
        let renamed = t.client.update_user(rename).await.expect("rename").into_inner();
        assert_eq!(renamed.display_name, "Countess", "{backend:?}");
        assert!(!renamed.active, "{backend:?}: implied mask leaves active alone");
        t.stop().await;
    }
}

fn prost_types_mask(paths: &[&str]) -> prost_types::FieldMask {
    prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() }
}

#[tokio::test]
async fn invalid_input_is_rejected_with_every_field_and_writes_nothing() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let err = t.create("not-an-email", "", "has spaces").await.expect_err("invalid");
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
        assert_eq!(field_violations(&err), ["email", "display_name", "request_id"], "{backend:?}");

        let err = t.client.get_user(GetUserRequest { id: "42".into() }).await.expect_err("bad id");
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
        assert_eq!(field_violations(&err), ["id"]);

        let err = t
            .client
            .list_users(ListUsersRequest { page_size: -1, page_token: "garbage".into() })
            .await
            .expect_err("bad page");
        assert_eq!(field_violations(&err), ["page_size", "page_token"], "{backend:?}");

        let err = t
            .client
            .update_user(UpdateUserRequest { user: None, update_mask: None })
            .await
            .expect_err("no user");
        assert_eq!(field_violations(&err), ["user"], "{backend:?}");

        // A mask of many long unknown paths, each quoted back: listing them all once made
        // trailers of ~200 KB, which the client refused (16 KiB), so the caller saw no
        // INVALID_ARGUMENT at all. Now the answer is capped and still names the field.
        let long = "p".repeat(2000);
        let paths: Vec<&str> = std::iter::repeat_n(long.as_str(), 100).collect();
        let hostile = UpdateUserRequest {
            user: Some(User { id: shopmesh::mesh::ids::new_id(), ..Default::default() }),
            update_mask: Some(prost_types_mask(&paths)),
        };
        let err = t.client.update_user(hostile).await.expect_err("hostile mask");
        assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {err:?}");
        let fields = field_violations(&err);
        assert_eq!(fields.len(), shopmesh::mesh::validation::MAX_LISTED_VIOLATIONS, "{backend:?}");
        assert!(fields.iter().all(|f| f == "update_mask"), "{backend:?}: {fields:?}");
        assert!(err.message().contains("(100 problems"), "{backend:?}: {}", err.message());
        assert_eq!(t.count().await, 0, "{backend:?}: nothing written");
        t.stop().await;
    }
}

#[tokio::test]
async fn duplicates_and_unknown_ids() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let first = t.create("grace@example.com", "Grace", "").await.expect("create");
        let err = t.create("GRACE@example.com", "Other Grace", "").await.expect_err("duplicate email");
        assert_eq!(err.code(), Code::AlreadyExists, "{backend:?}");

        let missing = shopmesh::mesh::ids::new_id();
        let err = t.client.get_user(GetUserRequest { id: missing.clone() }).await.expect_err("unknown");
        assert_eq!(err.code(), Code::NotFound, "{backend:?}");
        let update = UpdateUserRequest {
            user: Some(User { id: missing, display_name: "x".into(), ..Default::default() }),
            update_mask: None,
        };
        assert_eq!(t.client.update_user(update).await.expect_err("unknown").code(), Code::NotFound);

        let bad_mask = UpdateUserRequest {
            user: Some(User { id: first.id.clone(), email: "new@example.com".into(), ..Default::default() }),
            update_mask: Some(prost_types_mask(&["email"])),
        };
        let err = t.client.update_user(bad_mask).await.expect_err("immutable");
        assert_eq!(field_violations(&err), ["update_mask"], "{backend:?}");
        let still = t.client.get_user(GetUserRequest { id: first.id }).await.expect("get").into_inner();
        assert_eq!(still.email, "grace@example.com", "{backend:?}: nothing changed");
        assert_eq!(t.count().await, 1, "{backend:?}");
        t.stop().await;
    }
}

#[tokio::test]
async fn request_ids_make_create_idempotent() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let first = t.create("linus@example.com", "Linus", "signup-1").await.expect("create");
        for _ in 0..3 {
            let again = t.create("linus@example.com", "Linus", "signup-1").await.expect("replay");
            assert_eq!(again, first, "{backend:?}: a replay returns the same user");
        }
        let err = t.create("other@example.com", "Other", "signup-1").await.expect_err("reused key");
        assert_eq!(err.code(), Code::FailedPrecondition, "{backend:?}");
        assert_eq!(precondition(&err).as_deref(), Some("REQUEST_ID_REUSED"));
        assert_eq!(t.count().await, 1, "{backend:?}: nothing more written");
        t.stop().await;
    }
}

#[tokio::test]
async fn list_pages_through_every_user_once() {
    for backend in testing::backends() {
        let mut t = start(backend).await;
        let mut created = Vec::new();
        for i in 0..5 {
            created
                .push(t.create(&format!("u{i}@example.com"), &format!("U{i}"), "").await.expect("create").id);
        }
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = t
                .client
                .list_users(ListUsersRequest { page_size: 2, page_token: token })
                .await
                .expect("list")
                .into_inner();
            pages += 1;
            assert!(page.users.len() <= 2);
            seen.extend(page.users.into_iter().map(|u| u.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(pages, 3, "{backend:?}");
        assert_eq!(seen, created, "{backend:?}: every user once, in creation order");
        t.stop().await;
    }
}

#[tokio::test]
async fn health_and_reflection() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let t = start(Backend::Sqlite).await;
    let channel = Channel::from_shared(t.service.url()).expect("url").connect().await.expect("connect");
    let mut health = HealthClient::new(channel.clone());
    for service in ["", shopmesh_user::User::GRPC_SERVICE] {
        let status =
            health.check(HealthCheckRequest { service: service.into() }).await.expect("check").into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{service:?}");
    }
    let err = health
        .check(HealthCheckRequest { service: "shopmesh.order.v1.OrderService".into() })
        .await
        .expect_err("not served here");
    assert_eq!(err.code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        // Error details name this type; grpcurl resolves it here to print field violations.
        MessageRequest::FileContainingSymbol("google.rpc.BadRequest".into()),
    ]
    .map(|m| ServerReflectionRequest { host: String::new(), message_request: Some(m) });
    let mut replies = reflection
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .expect("reflect")
        .into_inner();
    let reply = replies.message().await.expect("reply").expect("first reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reply {reply:?}");
    };
    let reply = replies.message().await.expect("reply").expect("second reply");
    let Some(MessageResponse::FileDescriptorResponse(files)) = reply.message_response else {
        panic!("google.rpc.BadRequest is not resolvable: {reply:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "shopmesh.user.v1.UserService",
        ]
    );
    t.stop().await;
}

#[tokio::test]
async fn replicas_migrating_at_once_both_start() {
    use shopmesh::mesh::db;
    for backend in testing::backends() {
        let test_db = testing::database(backend, "migrate").await;
        let mesh = testing::mesh_config();
        let opens = (0..3).map(|_| db::open(&test_db.url, &mesh, shopmesh_user::User::MIGRATIONS));
        let pools = futures::future::join_all(opens).await;
        for pool in pools {
            let pool = pool.unwrap_or_else(|e| panic!("{backend:?}: a replica failed to migrate: {e}"));
            pool.close().await;
        }
        test_db.drop_database().await;
    }
}

/// The pool no longer pings a connection before handing it out (a round trip per call), so a
/// connection the server dropped is found by the statement that uses it: that call answers
/// UNAVAILABLE (which callers retry), never INTERNAL or UNKNOWN, and the pool replaces the
/// connection, so the calls after it succeed.
#[tokio::test]
async fn connections_the_database_dropped_are_replaced() {
    if !testing::backends().contains(&Backend::Postgres) {
        return;
    }
    let mut t = start(Backend::Postgres).await;
    let user = t.create("drop@example.com", "Drop", "").await.expect("create");
    let get = |c: &mut UserServiceClient<Channel>| {
        let mut c = c.clone();
        let id = user.id.clone();
        async move { c.get_user(GetUserRequest { id }).await.map(|_| ()) }
    };
    get(&mut t.client).await.expect("get before");
    let admin = std::env::var(testing::POSTGRES_ENV).expect("PostgreSQL URL");
    // The URL may carry parameters (`?pooler=transaction` when the suite runs through PgBouncer).
    let name =
        t.db.url.rsplit('/').next().and_then(|n| n.split('?').next()).expect("database name").to_owned();
    let mut conn = <sqlx::postgres::PgConnection as sqlx::Connection>::connect(&admin).await.expect("admin");
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
    )
    .bind(&name)
    .fetch_one(&mut conn)
    .await
    .expect("terminate");
    assert!(killed >= 1, "the service held no connection to terminate");
    let mut unavailable = 0;
    for _ in 0..10 {
        match get(&mut t.client).await {
            Ok(()) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                unavailable += 1;
            }
        }
    }
    assert!(unavailable <= killed, "{unavailable} failures for {killed} dropped connections");
    get(&mut t.client).await.expect("the pool has replaced its connections");
    t.stop().await;
}

/// Renames `id` in the database itself, behind the service's back (another replica's write).
async fn rename_behind(db: &TestDb, id: &str, name: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await.expect("database");
    sqlx::query("UPDATE users SET display_name = $1 WHERE id = $2")
        .bind(name)
        .bind(id)
        .execute(&pool)
        .await
        .expect("rename");
    pool.close().await;
}

/// GetUser answers from the replica's memory within `--user-cache-ttl`: another replica's
/// write is not seen until it expires, this replica's own update is seen at once; with `0s`
/// every call reads the database.
#[tokio::test]
async fn get_user_reads_from_memory_within_the_cache_ttl() {
    for backend in testing::backends() {
        let mut config = UserConfig::new("127.0.0.1:0".parse().expect("addr"), String::new());
        config.cache_ttl = std::time::Duration::from_secs(600);
        let mut t = start_with(backend, config).await;
        let user = t.create("cached@example.com", "Cached", "").await.expect("create");
        let get = |c: &mut UserServiceClient<Channel>, id: &str| {
            let (mut c, id) = (c.clone(), id.to_owned());
            async move { c.get_user(GetUserRequest { id }).await.expect("get").into_inner() }
        };
        assert_eq!(get(&mut t.client, &user.id).await.display_name, "Cached", "{backend:?}");
        rename_behind(&t.db, &user.id, "Behind").await;
        assert_eq!(get(&mut t.client, &user.id).await.display_name, "Cached", "{backend:?}: from memory");
        let rename = UpdateUserRequest {
            user: Some(User { id: user.id.clone(), display_name: "Own".into(), ..Default::default() }),
            update_mask: Some(prost_types_mask(&["display_name"])),
        };
        t.client.update_user(rename).await.expect("update");
        assert_eq!(get(&mut t.client, &user.id).await.display_name, "Own", "{backend:?}: own update seen");
        t.stop().await;

        let mut config = UserConfig::new("127.0.0.1:0".parse().expect("addr"), String::new());
        config.cache_ttl = std::time::Duration::ZERO;
        let mut t = start_with(backend, config).await;
        let user = t.create("uncached@example.com", "Uncached", "").await.expect("create");
        assert_eq!(get(&mut t.client, &user.id).await.display_name, "Uncached", "{backend:?}");
        rename_behind(&t.db, &user.id, "Behind").await;
        assert_eq!(get(&mut t.client, &user.id).await.display_name, "Behind", "{backend:?}: no cache");
        t.stop().await;
    }
}
