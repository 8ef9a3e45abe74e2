//! The `shopmesh` binary as a user runs it: all four services from one command, then SIGTERM;
//! and one service with `shopmesh serve`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shopmesh::api::catalog::v1::{
    CreateProductRequest, Product, catalog_service_client::CatalogServiceClient,
};
use shopmesh::api::common::v1::Money;
use shopmesh::api::order::v1::{
    CreateOrderRequest, GetOrderRequest, LineItem, OrderState, order_service_client::OrderServiceClient,
};
use shopmesh::api::user::v1::{CreateUserRequest, user_service_client::UserServiceClient};
use shopmesh::mesh::testing;

mod common;
use common::{Process, free_addr};
#[path = "common/pki.rs"]
mod pki;

/// The address printed on the banner line of `service` ("  order    127.0.0.1:41234   ...").
fn address_of(banner: &[String], service: &str) -> SocketAddr {
    banner
        .iter()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(service)).then(|| words.next()).flatten().and_then(|a| a.parse().ok())
        })
        .unwrap_or_else(|| panic!("no address for {service} in {banner:#?}"))
}

/// The product both all-in-one tests order: BOOK-42 at 12.50 USD.
fn book() -> Product {
    Product {
        sku: "BOOK-42".into(),
        display_name: "The book".into(),
        unit_price: Some(Money { currency_code: "USD".into(), amount_minor: 1_250 }),
        active: true,
        ..Product::default()
    }
}

#[tokio::test]
async fn shopmesh_runs_the_whole_mesh_and_stops_on_sigterm() {
    whole_mesh(Cpus::All).await;
}

/// With one CPU (a pod limited to one core, `taskset -c 0`) the binary runs on tokio's
/// current-thread scheduler (cli/src/main.rs says why): every service, the in-process events,
/// the drain and the exit must work there too, with no worker thread besides the main one.
#[tokio::test]
async fn on_one_cpu_the_whole_mesh_runs_on_one_scheduler_thread() {
    whole_mesh(Cpus::One).await;
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cpus {
    All,
    One,
}

async fn whole_mesh(cpus: Cpus) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = |name: &str| format!("sqlite://{}/{name}.db", dir.path().display());
    let (user_db, payment_db, order_db) = (db("user"), db("payment"), db("order"));
    let (catalog_db, ledger) = (db("catalog"), db("processor"));
    // No trace exporter, JSON logs: the log lines of a call must still carry its trace id.
    let logs_env = [("RUST_LOG", "debug".to_owned()), ("SHOPMESH_LOG_FORMAT", "json".to_owned())];
    let start = if cpus == Cpus::One { Process::start_on_one_cpu } else { Process::start_with };
    let mut process = start(
        &[
            "--user-listen=127.0.0.1:0",
            "--order-listen=127.0.0.1:0",
            "--payment-listen=127.0.0.1:0",
            "--catalog-listen=127.0.0.1:0",
            "--inventory-listen=127.0.0.1:0",
            "--notification-listen=127.0.0.1:0",
            &format!("--inventory-database-url={}", db("inventory")),
            &format!("--notification-database-url={}", db("notification")),
            // Far beyond terminate()'s 30 s: exiting in time proves the drain finished by
            // itself (with idle client connections open) rather than by the hard timeout.
            "--shutdown-timeout=120s",
            &format!("--user-database-url={user_db}"),
            &format!("--payment-database-url={payment_db}"),
            &format!("--order-database-url={order_db}"),
            &format!("--catalog-database-url={catalog_db}"),
            &format!("--processor-ledger-url={ledger}"),
        ],
        &logs_env,
        Stdio::piped(),
    );
    let mut stderr = process.child.stderr.take().expect("stderr");
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let banner = process.read_until("Ctrl-C stops every service");
    let text = banner.join("\n");
    assert!(text.contains("shopmesh is up"), "{text}");
    assert!(text.contains("grpcurl -plaintext"), "the banner shows a grpcurl example: {text}");
    let user_addr = address_of(&banner, "user");
    let order_addr = address_of(&banner, "order");
    let payment_addr = address_of(&banner, "payment");
    let catalog_addr = address_of(&banner, "catalog");
    assert!(text.contains(&format!("grpcurl -plaintext {order_addr} list")), "{text}");
    assert!(text.contains("without authentication"), "the banner says nobody is authenticated: {text}");

    let mut users = UserServiceClient::connect(format!("http://{user_addr}")).await.expect("user");
    let user = users
        .create_user(CreateUserRequest {
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            request_id: String::new(),
        })
        .await
        .expect("create user")
        .into_inner();
    // The order service prices the order from the catalog: the product is created there first.
    let mut catalog = CatalogServiceClient::connect(format!("http://{catalog_addr}")).await.expect("catalog");
    let product = book();
    catalog.create_product(CreateProductRequest { product: Some(product) }).await.expect("create product");
    let mut orders = OrderServiceClient::connect(format!("http://{order_addr}")).await.expect("order");
    let order = orders
        .create_order(CreateOrderRequest {
            user_id: user.id.clone(),
            line_items: vec![LineItem {
                sku: "BOOK-42".into(),
                quantity: 2,
                unit_price: Some(Money { currency_code: "USD".into(), amount_minor: 1_250 }),
            }],
            request_id: "first-order".into(),
        })
        .await
        .expect("create order")
        .into_inner();
    assert_eq!(order.state(), OrderState::Paid);
    assert_eq!(order.total, Some(Money { currency_code: "USD".into(), amount_minor: 2 * 1_250 }));
    let mut got =
        orders.get_order(GetOrderRequest { id: order.id.clone() }).await.expect("get order").into_inner();
    // The in-process bus may have recorded the fulfilment meanwhile (BACKORDERED: no stock was
    // set); the rest is the order as CreateOrder answered it.
    got.fulfilment = order.fulfilment;
    assert_eq!(got, order);
    testing::wait_serving(payment_addr, "shopmesh.payment.v1.PaymentService").await;
    // tokio names its multi-thread workers `tokio-rt-worker` (`tokio-runtime-worker` before).
    let workers = process.thread_names().into_iter().filter(|n| n.starts_with("tokio-r")).count();
    match cpus {
        Cpus::One => assert_eq!(workers, 0, "the multi-thread scheduler runs on one CPU"),
        Cpus::All if num_cpus() > 1 => {
            assert!(workers >= 1, "no runtime worker thread on {} CPUs", num_cpus());
        }
        Cpus::All => {}
    }

    let status = process.terminate().await;
    assert!(status.success(), "SIGTERM ends the mesh with exit code 0, got {status}");
    for file in ["user.db", "payment.db", "catalog.db", "order.db"] {
        assert!(dir.path().join(file).exists(), "{file} was created");
    }
    let logs = logs.join().expect("stderr reader");
    let stored = logs
        .lines()
        .find(|l| l.contains("\"order stored\""))
        .unwrap_or_else(|| panic!("no 'order stored' line:\n{logs}"));
    let trace_id = stored.split("\"trace_id\":\"").nth(1).and_then(|r| r.get(..32)).unwrap_or_default();
    assert!(
        trace_id.len() == 32 && trace_id.chars().all(|c| c.is_ascii_hexdigit()) && trace_id != "0".repeat(32),
        "no trace id on a line written inside the call: {stored}"
    );
}

#[tokio::test]
async fn shopmesh_serve_runs_one_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The binary prints no banner for one service: find a free port, then wait for health.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let process = Process::start(&[
        "serve",
        "payment",
        &format!("--payment-listen={addr}"),
        "--shutdown-timeout=120s",
        &format!("--payment-database-url=sqlite://{}/payment.db", dir.path().display()),
    ]);
    testing::wait_serving(addr, "shopmesh.payment.v1.PaymentService").await;
    testing::wait_serving(addr, "").await;
    let status = process.terminate().await;
    assert!(status.success(), "SIGTERM ends `serve` with exit code 0, got {status}");
}

#[test]
fn a_bad_setting_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_shopmesh"))
        .args(["serve", "order", "--call-timeout", "soon"])
        .output()
        .expect("run shopmesh");
    assert_eq!(out.status.code(), Some(2), "clap's usage error code");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--call-timeout"), "{stderr}");
}

#[test]
fn every_setting_has_an_environment_variable_in_help() {
    for args in [&["--help"][..], &["serve", "order", "--help"], &["serve", "payment", "--help"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_shopmesh")).args(args).output().expect("run shopmesh");
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        let flags = help
            .lines()
            .filter(|l| l.trim_start().starts_with("--") && !l.contains("--help") && !l.contains("--version"))
            .count();
        assert!(flags > 3, "{args:?}: {help}");
        assert_eq!(help.matches("[env: SHOPMESH_").count(), flags, "{args:?}: a variable per flag\n{help}");
    }
}

/// Runs `shopmesh args…`, which must refuse to start: fails if it is still running after 30 s
/// (it starts serving instead) or exits 0; returns its stderr.
fn refused_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shopmesh"))
        .args(args)
        .envs(env.iter().copied())
        .env("SHOPMESH_METRICS_LISTEN", "off")
        .env("SHOPMESH_LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shopmesh");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`shopmesh {}` started instead of refusing", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr);
    assert!(!status.success(), "`shopmesh {}` exited 0: {stderr}", args.join(" "));
    stderr
}

#[tokio::test]
async fn plaintext_without_authentication_beyond_loopback_needs_allow_insecure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = |name: &str| format!("--{name}-database-url=sqlite://{}/{name}.db", dir.path().display());
    let port = free_addr().port();
    let wildcard = format!("--user-listen=0.0.0.0:{port}");
    let user_db = db("user");

    // One service on every interface, with neither mTLS nor tokens: refused, saying how to fix it.
    let stderr = refused_start(&["serve", "user", &wildcard, &user_db], &[]);
    for needed in [&format!("0.0.0.0:{port}"), "--allow-insecure", "--tls-cert", "--jwt-jwks"] {
        assert!(stderr.contains(needed), "the refusal names {needed}: {stderr}");
    }
    // Tokens checked only when present authenticate nobody.
    let jwks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt/jwks.json");
    let jwks = jwks.to_string_lossy().into_owned();
    let tokens = ["--jwt-jwks", &jwks, "--jwt-issuer", "https://id.example", "--jwt-audience", "shopmesh"];
    let never = [&["serve", "user", &wildcard, &user_db, "--jwt-require", "never"][..], &tokens].concat();
    refused_start(&never, &[]);
    // The all-in-one run too, when any of its services is exposed.
    let mut all = vec![
        "--user-listen=127.0.0.1:0".to_owned(),
        format!("--order-listen=0.0.0.0:{port}"),
        "--payment-listen=127.0.0.1:0".to_owned(),
        "--catalog-listen=127.0.0.1:0".to_owned(),
        "--inventory-listen=127.0.0.1:0".to_owned(),
        "--notification-listen=127.0.0.1:0".to_owned(),
    ];
    all.extend(["user", "order", "payment", "catalog", "inventory", "notification"].map(db));
    let stderr = refused_start(&all.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(stderr.contains("--allow-insecure"), "{stderr}");

    // Said explicitly (flag or variable), it serves; so it does with tokens required.
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for (args, env) in [
        (vec!["serve", "user", &wildcard, &user_db, "--allow-insecure"], vec![]),
        (vec!["serve", "user", &wildcard, &user_db], vec![("SHOPMESH_ALLOW_INSECURE", "true".to_owned())]),
        ([&["serve", "user", &wildcard, &user_db][..], &tokens].concat(), vec![]),
    ] {
        let process = Process::start_with(&args, &env, Stdio::inherit());
        testing::wait_serving(local, "").await;
        let status = process.terminate().await;
        assert!(status.success(), "{args:?}: {status}");
    }
}

#[test]
fn help_never_shows_a_database_password_from_the_environment() {
    for args in [&["--help"][..], &["serve", "order", "--help"], &["migrate", "user", "--help"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_shopmesh"))
            .args(args)
            .env("SHOPMESH_ORDER_DATABASE_URL", "postgres://me:hunter2@db/order?sslpassword=hunter3")
            .env("SHOPMESH_USER_DATABASE_URL", "postgres://db/user?password=hunter4")
            .output()
            .expect("run shopmesh");
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("_DATABASE_URL]"), "{args:?}: {help}");
        assert!(!help.contains("hunter"), "{args:?} shows a password:\n{help}");
    }
}

/// Runs `shopmesh healthcheck` with `args`; its exit code.
fn healthcheck(args: &[&str]) -> std::process::ExitStatus {
    Command::new(env!("CARGO_BIN_EXE_shopmesh"))
        .arg("healthcheck")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .expect("run shopmesh healthcheck")
}

#[tokio::test]
async fn migrate_then_serve_with_healthcheck_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("--user-database-url=sqlite://{}/user.db", dir.path().display());
    let addr = free_addr();
    let a = addr.to_string();
    // Replicas that do not migrate wait, alive but NOT_SERVING, for the one-off migration.
    let _process =
        Process::start(&["serve", "user", &format!("--user-listen={addr}"), "--db-migrate=false", &db]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthcheck(&[&a, "liveness"]).success() {
        assert!(Instant::now() < deadline, "liveness never SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(healthcheck(&[&a]).code(), Some(1), "not ready before migrating");
    assert_eq!(healthcheck(&[&a, "shopmesh.user.v1.UserService"]).code(), Some(1));

    let migrated =
        Command::new(env!("CARGO_BIN_EXE_shopmesh")).args(["migrate", "user", &db]).status().expect("run");
    assert!(migrated.success(), "shopmesh migrate user: {migrated}");
    // Readiness is re-checked every 5 s by default.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthcheck(&[&a, "shopmesh.user.v1.UserService"]).success() {
        assert!(Instant::now() < deadline, "never SERVING after migrating");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthcheck(&[&format!("http://{addr}")]).success(), "URL form");
    assert_eq!(healthcheck(&[&a, "no.such.Service"]).code(), Some(1), "unknown service");
    assert_eq!(healthcheck(&[&free_addr().to_string()]).code(), Some(1), "nothing listening");
}

#[tokio::test]
async fn sigterm_under_load_drops_no_call() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use shopmesh::api::user::v1::GetUserRequest;

    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("--user-database-url=sqlite://{}/user.db", dir.path().display());
    let (a, b) = (free_addr(), free_addr());
    let replica = |addr: SocketAddr| {
        Process::start(&[
            "serve",
            "user",
            &format!("--user-listen={addr}"),
            "--drain-delay=500ms",
            "--shutdown-timeout=3s",
            &db,
        ])
    };
    let first = replica(a);
    testing::wait_serving(a, "shopmesh.user.v1.UserService").await;
    let _second = replica(b);
    testing::wait_serving(b, "shopmesh.user.v1.UserService").await;

    // A client with the mesh's stack over both replicas, as the order service would have.
    let config = shopmesh::mesh::config::ClientConfig::default();
    let channel = shopmesh::mesh::client::channel(
        &format!("http://{a},http://{b}"),
        &config,
        shopmesh::mesh_api().catalogue,
        None,
    )
    .await
    .expect("channel");
    let mut users = UserServiceClient::new(channel);
    let user = users
        .create_user(CreateUserRequest {
            email: "load@example.com".into(),
            display_name: "Load".into(),
            request_id: String::new(),
        })
        .await
        .expect("create")
        .into_inner();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (mut users, stop, ok, failed, id) =
                (users.clone(), stop.clone(), ok.clone(), failed.clone(), user.id.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match users.get_user(GetUserRequest { id: id.clone() }).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(status) => {
                            eprintln!("call failed: {status:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ok.load(Ordering::Relaxed);
    let sent = Instant::now();
    let status = first.terminate().await;
    let took = sent.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    assert!(status.success(), "exit code 0 after SIGTERM, got {status}");
    assert!(
        took < Duration::from_millis(500 + 3000 + 1000),
        "took {took:?}: past drain delay + hard timeout"
    );
    assert!(took >= Duration::from_millis(500), "left before the drain delay: {took:?}");
    assert!(ok.load(Ordering::Relaxed) > before, "load kept flowing");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "calls failed across the shutdown");
}

#[test]
fn every_variable_the_deployments_set_is_a_setting_of_the_binary() {
    // The chart and the compose file configure the binary by environment; a misspelt or
    // removed variable would be silently ignored there, so check them against `--help`.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("docker-compose.yml")];
    for dir in ["helm/shopmesh/templates", "helm/shopmesh/templates/tests"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("chart templates") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    let mut help = String::new();
    for svc in ["user", "order", "payment", "catalog", "inventory", "notification"] {
        let out = Command::new(env!("CARGO_BIN_EXE_shopmesh"))
            .args(["serve", svc, "--help"])
            .output()
            .expect("run");
        help.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    use shopmesh::mesh::events::{DEAD_LETTER, INVENTORY, ORDER};
    let streams = [ORDER.name, INVENTORY.name, DEAD_LETTER.name];
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for (i, _) in text.match_indices("SHOPMESH_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // Names assembled by the template (SHOPMESH_{{ $upper }}_LISTEN) end in "_"; the
            // JetStream streams KEDA's triggers name are no variables.
            if name.ends_with('_') || streams.contains(&name.as_str()) {
                continue;
            }
            assert!(
                help.contains(&format!("[env: {name}]")),
                "{} sets {name}, which shopmesh does not read",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} variables found: did the chart move?");
}

/// With `--tls-*` the all-in-one run waited for its services over plaintext, which mutual TLS
/// refuses: it never became ready. Now it asks through its own client, and every service, all
/// presenting the one certificate, requires that identity of the services it calls.
#[tokio::test]
async fn the_whole_mesh_on_mutual_tls_starts_and_places_an_order() {
    use shopmesh::mesh::security::certificates::Ca;

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("mesh CA").expect("ca");
    let own = dir.path().join("order");
    pki::workload(&ca, "shopmesh-order").write_to(&own).expect("write");
    let client = pki::client_config(&ca.cert_pem(), Some(&pki::workload(&ca, "shopmesh-gateway")));
    let db = |name: &str| format!("--{name}=sqlite://{}/{name}.db", dir.path().display());
    let file = |flag: &str, name: &str| format!("--{flag}={}", own.join(name).display());
    let process = Process::start_with(
        &[
            "--user-listen=127.0.0.1:0",
            "--order-listen=127.0.0.1:0",
            "--payment-listen=127.0.0.1:0",
            "--catalog-listen=127.0.0.1:0",
            "--inventory-listen=127.0.0.1:0",
            "--notification-listen=127.0.0.1:0",
            &db("inventory-database-url"),
            &db("notification-database-url"),
            &db("user-database-url"),
            &db("payment-database-url"),
            &db("order-database-url"),
            &db("catalog-database-url"),
            &db("processor-ledger-url"),
            &file("tls-cert", "tls.crt"),
            &file("tls-key", "tls.key"),
            &file("tls-ca", "ca.crt"),
        ],
        &[],
        Stdio::null(),
    );
    let banner = process.read_until("Ctrl-C stops every service");
    let text = banner.join("\n");
    assert!(text.contains("shopmesh is up"), "{text}");
    assert!(!text.contains("without authentication"), "mutual TLS authenticates every caller: {text}");
    assert!(text.contains(&format!("grpcurl -cacert {}", own.join("ca.crt").display())), "{text}");

    let (user_addr, catalog_addr, order_addr) =
        (address_of(&banner, "user"), address_of(&banner, "catalog"), address_of(&banner, "order"));
    let user = UserServiceClient::new(pki::channel(user_addr, client.clone()))
        .create_user(CreateUserRequest {
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            request_id: String::new(),
        })
        .await
        .expect("create user over mTLS")
        .into_inner();
    let product = book();
    CatalogServiceClient::new(pki::channel(catalog_addr, client.clone()))
        .create_product(CreateProductRequest { product: Some(product) })
        .await
        .expect("create product over mTLS");
    // Order calls user, catalog and payment over mTLS, each presenting the process's identity.
    let order = OrderServiceClient::new(pki::channel(order_addr, client))
        .create_order(CreateOrderRequest {
            user_id: user.id,
            line_items: vec![LineItem { sku: "BOOK-42".into(), quantity: 2, unit_price: None }],
            request_id: "first-order".into(),
        })
        .await
        .expect("create order over mTLS")
        .into_inner();
    assert_eq!(order.state(), OrderState::Paid);
    assert!(process.terminate().await.success());
}

#[test]
fn a_service_of_events_without_a_broker_refuses_to_start_saying_what_to_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    for svc in ["order", "inventory", "notification"] {
        let listen = format!("--{svc}-listen=127.0.0.1:0");
        let db = format!("--{svc}-database-url=sqlite://{}/{svc}.db", dir.path().display());
        let stderr = refused_start(&["serve", svc, &listen, &db], &[]);
        assert!(stderr.contains("--events-url") && stderr.contains("SHOPMESH_EVENTS_URL"), "{svc}: {stderr}");
    }
    // A URL that cannot name a server is a start-up error naming it (a broker not up yet is
    // waited for instead: `cli/tests/events.rs`).
    let db = format!("--inventory-database-url=sqlite://{}/inventory.db", dir.path().display());
    let malformed = "--events-url=nats://127.0.0.1:99999";
    let stderr =
        refused_start(&["serve", "inventory", "--inventory-listen=127.0.0.1:0", &db, malformed], &[]);
    assert!(stderr.contains("events broker: cannot connect"), "{stderr}");
}
