//! In-process calls between services of one process (the all-in-one run's path): real server
//! stacks and real client stacks in this test process, called through the mesh's own channels,
//! which must then go in-process (counted) and behave as over a socket: the caller's deadline
//! reaches the callee, a callee's status and a shed call's RESOURCE_EXHAUSTED come back as they
//! are, a dropped call drops the callee's handler, and the authorization policy judges the
//! calling service's identity.

#[path = "common/pki.rs"]
mod pki;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pki::{counted, id, workload};
use shopmesh::api::user::v1::user_service_client::UserServiceClient;
use shopmesh::api::user::v1::user_service_server::{UserService, UserServiceServer};
use shopmesh::api::user::v1::{
    CreateUserRequest, GetUserRequest, ListUsersRequest, ListUsersResponse, UpdateUserRequest, User,
};
use shopmesh::mesh::client::local::LocalServers;
use shopmesh::mesh::config::SecurityConfig;
use shopmesh::mesh::security::certificates::Ca;
use shopmesh::mesh::service::{Listeners, Mesh};
use shopmesh::mesh::testing::{self, Backend, Spawned};
use shopmesh::mesh::upstream::{Upstream, Upstreams};
use shopmesh::mesh::{request_deadline, server};
use shopmesh_user::{User as UserSvc, UserConfig};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tonic::Code;
use tonic::service::Routes;

const USER: Upstream = Upstream {
    name: "user",
    grpc_service: "shopmesh.user.v1.UserService",
    default_url: "http://127.0.0.1:1",
    role: "is called here",
};

/// What the scripted user service saw of a call, and how it answers.
#[derive(Default)]
struct Script {
    /// The handler's remaining deadline at each GetUser.
    deadlines: Mutex<Vec<Option<Duration>>>,
    /// GetUser waits here when `hold` is set.
    release: Notify,
    hold: std::sync::atomic::AtomicBool,
    /// Told when a held handler is dropped unfinished.
    dropped: Mutex<Option<oneshot::Sender<()>>>,
}

/// A user service whose GetUser records its deadline and answers NOT_FOUND (optionally held
/// until released), so the caller sees what the callee saw.
#[derive(Clone, Default)]
struct Scripted(Arc<Script>);

struct DropTell(Arc<Script>, bool);

impl Drop for DropTell {
    fn drop(&mut self) {
        if !self.1
            && let Some(tx) = self.0.dropped.lock().expect("lock").take()
        {
            let _ = tx.send(());
        }
    }
}

#[tonic::async_trait]
impl UserService for Scripted {
    async fn create_user(
        &self,
        _: tonic::Request<CreateUserRequest>,
    ) -> Result<tonic::Response<User>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted"))
    }

    async fn get_user(
        &self,
        request: tonic::Request<GetUserRequest>,
    ) -> Result<tonic::Response<User>, tonic::Status> {
        self.0.deadlines.lock().expect("lock").push(request_deadline::remaining());
        if self.0.hold.load(std::sync::atomic::Ordering::SeqCst) {
            let mut tell = DropTell(self.0.clone(), false);
            self.0.release.notified().await;
            tell.1 = true;
        }
        Err(tonic::Status::not_found(format!("no user {}", request.get_ref().id)))
    }

    async fn list_users(
        &self,
        _: tonic::Request<ListUsersRequest>,
    ) -> Result<tonic::Response<ListUsersResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted"))
    }

    async fn update_user(
        &self,
        _: tonic::Request<UpdateUserRequest>,
    ) -> Result<tonic::Response<User>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted"))
    }
}

/// Serves `routes` as this process's service `user` of `mesh` on `listener`.
async fn serve_user(mesh: &Mesh, listener: TcpListener, routes: Routes) -> Spawned {
    let mesh = mesh.clone();
    testing::spawn_on(listener, "shopmesh.user.v1.UserService", move |listener, shutdown| async move {
        server::serve(
            Some("user"),
            &mesh,
            &["shopmesh.user.v1.UserService"],
            routes,
            Listeners::new(listener),
            None,
            shutdown,
        )
        .await
    })
    .await
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_between_services_of_one_process_go_in_process_as_over_the_socket() {
    pki::metrics();
    let (listener, user_addr) = bind().await;
    let order_addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let mut config = testing::mesh_config();
    // One call at a time: the second is shed, as over the socket.
    config.server.max_concurrent_requests = 1;
    let local = LocalServers::new([("user", user_addr), ("order", order_addr)]);
    let mesh = testing::mesh(config)
        .with_upstreams(Upstreams::new().at("user", format!("http://{user_addr}")))
        .with_local_servers(local);
    let script = Scripted::default();
    let user = serve_user(&mesh, listener, Routes::new(UserServiceServer::new(script.clone()))).await;

    let channel = mesh.upstream_channel("order", &USER).await.expect("channel");
    let before = counted("shopmesh_client_in_process_calls_total", &[("target", "user")]);
    let mut users = UserServiceClient::new(channel);

    // The caller's deadline (below the method's default of 5 s) reaches the callee's handler,
    // less the client's margin and the time on the way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let answer =
        request_deadline::scope(Some(deadline), users.get_user(GetUserRequest { id: "ghost".into() }))
            .await
            .expect_err("NOT_FOUND");
    // The callee's status, message and all, as it answered.
    assert_eq!(answer.code(), Code::NotFound, "{answer:?}");
    assert_eq!(answer.message(), "no user ghost");
    let seen = script.0.deadlines.lock().expect("lock").last().copied().flatten().expect("a deadline");
    assert!(seen < Duration::from_secs(4), "{seen:?}");
    assert!(seen > Duration::from_secs(2), "the caller's 4 s, less the margin: {seen:?}");
    assert!(
        counted("shopmesh_client_in_process_calls_total", &[("target", "user")]) >= before + 1.0,
        "the call did not go in-process"
    );

    // Shedding: one call holds the only slot; the next is refused with RESOURCE_EXHAUSTED.
    script.0.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let (dropped_tx, dropped_rx) = oneshot::channel();
    *script.0.dropped.lock().expect("lock") = Some(dropped_tx);
    let mut held = users.clone();
    let held = tokio::spawn(async move { held.get_user(GetUserRequest { id: "held".into() }).await });
    while script.0.deadlines.lock().expect("lock").len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let shed = users.get_user(GetUserRequest { id: "shed".into() }).await.expect_err("shed");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");

    // Cancellation: the caller gives up, the callee's handler is dropped unfinished, and its
    // slot is free again.
    held.abort();
    tokio::time::timeout(Duration::from_secs(10), dropped_rx).await.expect("handler dropped").expect("told");
    script.0.hold.store(false, std::sync::atomic::Ordering::SeqCst);
    let after = users.get_user(GetUserRequest { id: "after".into() }).await.expect_err("NOT_FOUND");
    assert_eq!(after.code(), Code::NotFound, "the slot was given back: {after:?}");

    // A message over the server's limit is refused before its handler, as over the socket;
    // one just under it is read and handled.
    let limit = testing::mesh_config().server.max_message_bytes;
    let big = users.get_user(GetUserRequest { id: "x".repeat(limit + 1) }).await.expect_err("too large");
    assert_eq!(big.code(), Code::ResourceExhausted, "{:?}", big.message());
    let handled = script.0.deadlines.lock().expect("lock").len();
    let large = users.get_user(GetUserRequest { id: "x".repeat(limit - 64) }).await.expect_err("NOT_FOUND");
    assert_eq!(large.code(), Code::NotFound, "{:?}", large.code());
    assert_eq!(script.0.deadlines.lock().expect("lock").len(), handled + 1, "the handler saw it");

    // Outside callers still reach the service over its port.
    let mut tcp = UserServiceClient::connect(format!("http://{user_addr}")).await.expect("connect");
    let over_tcp = tcp.get_user(GetUserRequest { id: "tcp".into() }).await.expect_err("NOT_FOUND");
    assert_eq!(over_tcp.code(), Code::NotFound);

    // Once the callee has stopped, in-process calls are refused UNAVAILABLE, as a closed port.
    user.stop().await.expect("clean stop");
    let gone = users.get_user(GetUserRequest { id: "gone".into() }).await.expect_err("stopped");
    assert_eq!(gone.code(), Code::Unavailable, "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_judges_an_in_process_caller_by_its_identity() {
    pki::metrics();
    let ca = Ca::new("mesh CA").expect("ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = testing::database(Backend::Sqlite, "user").await;
    let (listener, user_addr) = bind().await;
    let order_addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    // One process presenting the order service's identity, as the all-in-one presents one
    // identity for all its services.
    let mut config = testing::mesh_config();
    config.security = SecurityConfig {
        authz_policy: Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/authz-policy.json"),
        ),
        ..pki::security(dir.path(), &workload(&ca, "shopmesh-order"))
    };
    let mut upstreams = Upstreams::new().at("user", format!("http://{user_addr}"));
    upstreams.expect_everywhere(&id("shopmesh-order"));
    let mesh = testing::mesh(config)
        .with_upstreams(upstreams)
        .with_local_servers(LocalServers::new([("user", user_addr), ("order", order_addr)]));
    let user =
        testing::start_service_on::<UserSvc>(listener, &mesh, UserConfig::new(user_addr, db.url.clone()));
    let channel = mesh.upstream_channel("order", &USER).await.expect("channel");
    let before = counted("shopmesh_client_in_process_calls_total", &[("target", "user")]);
    let mut users = UserServiceClient::new(channel);

    // The order service may look users up (the answer comes from the handler, past the policy;
    // the call may first wait for the database behind the readiness gate)...
    let found = loop {
        let request = GetUserRequest { id: shopmesh::mesh::ids::new_id() };
        let status = users.get_user(request).await.expect_err("no such user");
        if status.code() != Code::Unavailable {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(found.code(), Code::NotFound, "{found:?}");
    // ...but not list or create them: refused by the policy, naming the in-process caller.
    let denied = users.list_users(ListUsersRequest::default()).await.expect_err("denied");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains(&id("shopmesh-order")), "{denied:?}");
    let denied = users
        .create_user(CreateUserRequest {
            email: "eve@example.com".into(),
            display_name: "Eve".into(),
            request_id: String::new(),
        })
        .await
        .expect_err("denied");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        counted("shopmesh_client_in_process_calls_total", &[("target", "user")]) >= before + 3.0,
        "the calls did not go in-process"
    );
    user.stop().await.expect("clean stop");
    db.drop_database().await;
}
