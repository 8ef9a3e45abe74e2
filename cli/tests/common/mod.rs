//! Helpers shared by the tests that run the `shopmesh` binary.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `shopmesh` process whose stdout lines arrive on a channel.
pub struct Process {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

/// A free port on 127.0.0.1 (bound, then released for the process under test).
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr")
}

impl Process {
    /// Starts `shopmesh args…` with its metrics on a port of its own.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, &[], Stdio::inherit())
    }

    /// Starts `shopmesh args…` with extra environment variables and stderr going to `stderr`.
    pub fn start_with(args: &[&str], env: &[(&str, String)], stderr: Stdio) -> Self {
        Self::spawn(Command::new(env!("CARGO_BIN_EXE_shopmesh")), args, env, stderr)
    }

    /// As [`Process::start_with`], allowed to run on CPU 0 only (`taskset -c 0`), as in a pod
    /// limited to one core.
    pub fn start_on_one_cpu(args: &[&str], env: &[(&str, String)], stderr: Stdio) -> Self {
        let mut taskset = Command::new("taskset");
        taskset.args(["-c", "0", env!("CARGO_BIN_EXE_shopmesh")]);
        Self::spawn(taskset, args, env, stderr)
    }

    fn spawn(mut command: Command, args: &[&str], env: &[(&str, String)], stderr: Stdio) -> Self {
        let mut child = command
            .args(args)
            .env("RUST_LOG", "warn")
            .env("SHOPMESH_METRICS_LISTEN", free_addr().to_string())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start shopmesh");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The names of the process's threads (Linux truncates them to 15 bytes).
    pub fn thread_names(&self) -> Vec<String> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).expect("/proc/PID/task");
        tasks
            .filter_map(Result::ok)
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .collect()
    }

    /// Stdout lines up to and including the first that contains `marker`.
    pub fn read_until(&self, marker: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(marker);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("no {marker:?} on stdout within 60s; saw {seen:#?}"),
            }
        }
    }

    /// Sends SIGTERM and waits (at most 30 s) for the process to exit. Async, so that this
    /// test's own client connections keep answering the server's HTTP/2 GOAWAY and PING.
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "shopmesh did not exit within 30s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
