//! A TCP fault proxy: forwards connections to an upstream address while the harness switches it
//! between modes — pass, added latency, a black hole (bytes swallowed, so calls that reached the
//! server lose their replies), refusing new connections — and resets every open connection on
//! demand (TCP RST).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forward as is.
    Pass = 0,
    /// Forward each chunk after a delay.
    Latency = 1,
    /// Read and discard in both directions: the peer's calls arrive nowhere, or their replies
    /// are lost.
    BlackHole = 2,
    /// Close new connections at once; open ones keep forwarding.
    Refuse = 3,
    /// Forward calls, discard replies: calls take effect and their callers never learn it.
    LoseReplies = 4,
}

impl Mode {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Latency,
            2 => Self::BlackHole,
            3 => Self::Refuse,
            4 => Self::LoseReplies,
            _ => Self::Pass,
        }
    }
}

/// Handle to a running proxy.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    latency_ms: Arc<AtomicU64>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
    connections: Arc<AtomicU64>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (resets, _) = watch::channel(0);
        let proxy = Self {
            addr,
            mode: Arc::new(AtomicU8::new(Mode::Pass as u8)),
            latency_ms: Arc::new(AtomicU64::new(0)),
            resets,
            connections: Arc::new(AtomicU64::new(0)),
            task: Arc::new(Mutex::new(None)),
        };
        let accept = proxy.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                accept.connections.fetch_add(1, Ordering::Relaxed);
                if accept.mode() == Mode::Refuse {
                    let _ = client.set_zero_linger();
                    drop(client);
                    continue;
                }
                tokio::spawn(accept.clone().forward(client, upstream));
            }
        });
        *proxy.task.lock().expect("lock") = Some(task);
        proxy
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Relaxed))
    }

    /// Switches the mode; `latency` applies in [`Mode::Latency`].
    pub fn set(&self, mode: Mode, latency: Duration) {
        self.latency_ms.store(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Resets (RST) every open connection.
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Stops accepting.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().expect("lock").take() {
            task.abort();
        }
        self.reset_all();
    }

    async fn forward(self, mut client: TcpStream, upstream: SocketAddr) {
        let Ok(mut server) = TcpStream::connect(upstream).await else {
            let _ = client.set_zero_linger();
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let mut reset = self.resets.subscribe();
        reset.mark_unchanged();
        let was_reset = {
            let (mut client_read, mut client_write) = client.split();
            let (mut server_read, mut server_write) = server.split();
            let up = self.pump(&mut client_read, &mut server_write, false);
            let down = self.pump(&mut server_read, &mut client_write, true);
            tokio::select! {
                _ = async { tokio::join!(up, down) } => false,
                _ = reset.changed() => true,
            }
        };
        if was_reset {
            // Zero linger: dropping the sockets sends RST instead of FIN.
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
        }
    }

    /// Copies one direction (`replies`: server to client) until EOF or an error, applying the
    /// mode chunk by chunk.
    async fn pump<R, W>(&self, from: &mut R, to: &mut W, replies: bool)
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let mut buf = vec![0_u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            match self.mode() {
                Mode::BlackHole => continue,
                Mode::LoseReplies if replies => continue,
                Mode::Latency => {
                    let ms = self.latency_ms.load(Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Mode::Pass | Mode::Refuse | Mode::LoseReplies => {}
            }
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    }
}
