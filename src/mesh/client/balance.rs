//! Client-side load balancing over every replica of a service.
//!
//! A gRPC connection lives long, so a Kubernetes ClusterIP Service would pin each client to one
//! pod and pods added by the autoscaler would get nothing. Instead a target names every
//! replica: a list of addresses, or a DNS name (a headless Service) re-resolved on an interval.
//! Calls are spread by power-of-two-choices over the endpoints' in-flight counts (tower's p2c
//! balancer). An endpoint that fails several calls in a row (UNAVAILABLE or a connection error)
//! is ejected for a backoff period, doubled each time, but never the last one left. One that
//! refuses a connection (a replica restarting, gone) is ejected at its first refusal, and is
//! out of the balancer's choice at once, before the ejection is processed: the retry of the
//! refused call (never sent, so safe on any method) goes to another endpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::{BoxError, Service};

use crate::mesh::Error;
use crate::mesh::config::ClientConfig;
use crate::mesh::grpc::answer::Answer;
use crate::mesh::grpc::code::header_code;
use crate::mesh::grpc::respond::{Refusal, connect_failed, is_timeout, never_sent};
use crate::mesh::security::connect::TlsConnector;

/// Longest an endpoint stays ejected, however often it failed.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// Calls that may wait in the balancer's queue for an endpoint to become ready.
const QUEUE: usize = 1024;

/// Where a target's endpoints come from.
#[derive(Debug)]
pub enum Source {
    /// `host:port` names, resolved with DNS (IP literals resolve to themselves) on an interval.
    Dns(Vec<(String, u16)>),
    /// A list pushed by the caller (its own discovery, or a test adding replicas).
    Watch(watch::Receiver<Vec<SocketAddr>>),
}

impl Source {
    /// Parses a target: `http://host:port`, or several comma-separated.
    ///
    /// # Errors
    /// [`Error::Config`] naming the part that is not `http://host:port`.
    pub fn parse(target: &str) -> Result<Self, Error> {
        let mut names = Vec::new();
        for part in target.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let shown = crate::mesh::db::redact(part);
            let uri: http::Uri =
                part.parse().map_err(|e| Error::Config(format!("bad service URL {shown:?}: {e}")))?;
            if uri.scheme_str() != Some("http") {
                return Err(Error::Config(format!("bad service URL {shown:?}: use http://host:port")));
            }
            let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
                return Err(Error::Config(format!("bad service URL {shown:?}: use http://host:port")));
            };
            names.push((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port));
        }
        if names.is_empty() {
            return Err(Error::Config(format!("no service URL in {:?}", crate::mesh::db::redact(target))));
        }
        Ok(Self::Dns(names))
    }
}

/// Resolves every name to all of its addresses. A name that fails to resolve is skipped (and
/// logged); `None` only when nothing resolved, so the caller keeps its last known set.
pub async fn resolve(names: &[(String, u16)]) -> Option<BTreeSet<SocketAddr>> {
    let mut out = BTreeSet::new();
    let mut any = false;
    for (host, port) in names {
        match tokio::net::lookup_host((host.as_str(), *port)).await {
            Ok(addrs) => {
                any = true;
                out.extend(addrs);
            }
            Err(err) => tracing::warn!(%host, port, %err, "cannot resolve service name"),
        }
    }
    any.then_some(out)
}

type Endpoint = PendingRequests<EndpointService>;
type Discovery = tokio_stream::wrappers::ReceiverStream<Result<Change<SocketAddr, Endpoint>, Infallible>>;
type BalanceFuture = <Balance<Discovery, Request<Bytes>> as Service<Request<Bytes>>>::Future;

/// A balanced channel to every endpoint of one target. Cheap to clone: clones share the
/// balancer, which runs on its own task behind a queue.
#[derive(Clone)]
pub struct Balanced {
    inner: Buffer<Request<Bytes>, BalanceFuture>,
    endpoints: Arc<AtomicUsize>,
    target: Arc<str>,
}

impl std::fmt::Debug for Balanced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balanced")
            .field("target", &self.target)
            .field("endpoints", &self.endpoints.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Balanced {
    /// Balances over `source`, named `target` in logs, connecting with mutual TLS when `tls`
    /// is given. The first resolution is done before this returns, so the first call already
    /// has its endpoints; discovery then runs on a task that ends when the last clone is
    /// dropped.
    pub async fn new(target: &str, source: Source, config: &ClientConfig, tls: Option<TlsConnector>) -> Self {
        // Shown in logs, metrics and UNAVAILABLE answers: never with a password in it.
        let target: Arc<str> = crate::mesh::db::redact(target).into();
        let (changes, discovery) = mpsc::channel(64);
        let (eject_tx, eject_rx) = mpsc::unbounded_channel();
        let endpoints = Arc::new(AtomicUsize::new(0));
        let mut controller = Controller {
            target: target.clone(),
            changes,
            eject_tx,
            endpoints: endpoints.clone(),
            config: config.clone(),
            tls,
            resolved: BTreeSet::new(),
            active: BTreeMap::new(),
            ejected: BTreeMap::new(),
            ejections: BTreeMap::new(),
            generation: 0,
        };
        let mut source = source;
        let first = match &mut source {
            Source::Dns(names) => resolve(names).await,
            Source::Watch(rx) => Some(rx.borrow_and_update().iter().copied().collect()),
        };
        if let Some(set) = first {
            controller.reconcile(set).await;
        }
        let balance = Balance::new(tokio_stream::wrappers::ReceiverStream::new(discovery));
        let inner = Buffer::new(balance, QUEUE);
        tokio::spawn(controller.run(source, eject_rx));
        Self { inner, endpoints, target }
    }

    /// How many endpoints calls are spread over now (ejected ones excluded).
    pub fn endpoints(&self) -> usize {
        self.endpoints.load(Ordering::Relaxed)
    }
}

impl Service<Request<Bytes>> for Balanced {
    type Response = Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = BalancedFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        if self.endpoints.load(Ordering::Relaxed) == 0 {
            // Waiting for an endpoint would only end at the deadline; say what is wrong now.
            return Answer::refuse(&Refusal::NoEndpoints { target: self.target.to_string() });
        }
        Answer::inner(self.inner.call(request))
    }
}

/// The response of a [`Balanced`] service: sent through the balancer, or refused at once when
/// the target has no endpoints.
pub type BalancedFuture = Answer<tower::buffer::future::ResponseFuture<BalanceFuture>, tonic::body::Body>;

/// An endpoint that failed `eject_after_failures` calls in a row, or refused a connection.
#[derive(Debug)]
struct Eject {
    addr: SocketAddr,
    generation: u64,
    /// Its hold, to let it back in when it is the last endpoint.
    held: Arc<Held>,
}

/// Whether an endpoint is held out of the balancer's choice: set on the call path as soon as it
/// refuses a connection, so the very next pick avoids it, until the controller has ejected it
/// (or let it back, when it is the last one).
#[derive(Debug, Default)]
struct Held {
    out: std::sync::atomic::AtomicBool,
    /// The balancer's task, waiting for this endpoint to be ready again.
    waker: futures::task::AtomicWaker,
}

impl Held {
    fn release(&self) {
        self.out.store(false, Ordering::Release);
        self.waker.wake();
    }
}

/// One endpoint: a lazily connected HTTP/2 channel, counting consecutive failures.
#[derive(Debug, Clone)]
pub struct EndpointService {
    channel: tonic::transport::Channel,
    failures: Arc<AtomicU32>,
    threshold: u32,
    addr: SocketAddr,
    generation: u64,
    eject: mpsc::UnboundedSender<Eject>,
    held: Arc<Held>,
}

impl Service<Request<Bytes>> for EndpointService {
    type Response = Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = EndpointFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Not ready while held out: the p2c balancer then picks among the other endpoints.
        if self.held.out.load(Ordering::Acquire) {
            self.held.waker.register(cx.waker());
            if self.held.out.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        self.channel.poll_ready(cx).map_err(BoxError::from)
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let request = request.map(|body| tonic::body::Body::new(http_body_util::Full::new(body)));
        EndpointFuture { inner: self.channel.call(request), endpoint: Some(self.clone()) }
    }
}

impl EndpointService {
    fn record(&self, failed: bool) {
        if !failed {
            self.failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures == self.threshold {
            self.send_eject();
        }
    }

    /// The endpoint refused a connection: out of the balancer's choice now, ejected next.
    fn refused(&self) {
        if !self.held.out.swap(true, Ordering::AcqRel) {
            self.send_eject();
        }
    }

    fn send_eject(&self) {
        let eject = Eject { addr: self.addr, generation: self.generation, held: self.held.clone() };
        let _ = self.eject.send(eject);
    }
}

pin_project! {
    /// The response of an [`EndpointService`].
    pub struct EndpointFuture {
        #[pin]
        inner: tonic::transport::channel::ResponseFuture,
        endpoint: Option<EndpointService>,
    }
}

impl Future for EndpointFuture {
    type Output = Result<Response<tonic::body::Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let failed = match &result {
            Ok(response) => Some(header_code(response) == Some(tonic::Code::Unavailable)),
            // No connection: out at once, whatever the threshold.
            Err(err) if connect_failed(err) => {
                if let Some(endpoint) = this.endpoint.take() {
                    endpoint.refused();
                }
                None
            }
            // Not written because its connection was closing (a GOAWAY: the connection's age,
            // or a pod draining): retried elsewhere, and says nothing about the endpoint.
            Err(err) if never_sent(err) => None,
            // The call ran out of time: says nothing about the endpoint's health.
            Err(err) if is_timeout(err) => None,
            Err(_) => Some(true),
        };
        if let (Some(failed), Some(endpoint)) = (failed, this.endpoint.take()) {
            endpoint.record(failed);
        }
        Poll::Ready(result.map_err(BoxError::from))
    }
}

/// Keeps the balancer's endpoint set equal to what discovery found minus what is ejected.
struct Controller {
    target: Arc<str>,
    changes: mpsc::Sender<Result<Change<SocketAddr, Endpoint>, Infallible>>,
    eject_tx: mpsc::UnboundedSender<Eject>,
    endpoints: Arc<AtomicUsize>,
    config: ClientConfig,
    /// Mutual TLS for new connections, when on.
    tls: Option<TlsConnector>,
    /// What discovery found last.
    resolved: BTreeSet<SocketAddr>,
    /// In the balancer, with the generation of their service.
    active: BTreeMap<SocketAddr, u64>,
    /// Out of the balancer until then.
    ejected: BTreeMap<SocketAddr, Instant>,
    /// How often each address was ejected, for the doubling backoff.
    ejections: BTreeMap<SocketAddr, u32>,
    generation: u64,
}

impl Controller {
    async fn run(mut self, mut source: Source, mut ejects: mpsc::UnboundedReceiver<Eject>) {
        let mut tick = tokio::time::interval(self.config.resolve_interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.reset();
        loop {
            let next_return = self.ejected.values().min().copied();
            tokio::select! {
                () = self.changes.closed() => return,
                _ = tick.tick(), if matches!(source, Source::Dns(_)) => {
                    if let Source::Dns(names) = &source
                        && let Some(set) = resolve(names).await
                    {
                        self.reconcile(set).await;
                    }
                }
                changed = async {
                    match &mut source {
                        Source::Watch(rx) => rx.changed().await,
                        Source::Dns(_) => std::future::pending().await,
                    }
                } => {
                    let Source::Watch(rx) = &mut source else { continue };
                    if changed.is_err() {
                        // The owner dropped the list: keep the last one.
                        source = Source::Dns(Vec::new());
                        continue;
                    }
                    let set = rx.borrow_and_update().iter().copied().collect();
                    self.reconcile(set).await;
                }
                Some(eject) = ejects.recv() => self.eject(eject).await,
                () = sleep_until_opt(next_return) => self.return_ejected().await,
            }
        }
    }

    async fn send(&self, change: Change<SocketAddr, Endpoint>) {
        let _ = self.changes.send(Ok(change)).await;
    }

    async fn insert(&mut self, addr: SocketAddr) {
        self.generation += 1;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).map(|e| {
            e.connect_timeout(self.config.connect_timeout)
                .tcp_nodelay(true)
                // Finds a peer that vanished without closing (a killed pod) on an idle
                // connection.
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
        });
        let channel = channel.map(|e| match &self.tls {
            Some(tls) => e.connect_with_connector_lazy(tls.clone()),
            None => e.connect_lazy(),
        });
        let Ok(channel) = channel else {
            tracing::error!(%addr, "cannot build a channel to this address");
            return;
        };
        let service = EndpointService {
            channel,
            failures: Arc::new(AtomicU32::new(0)),
            threshold: self.config.eject_after_failures.max(1),
            addr,
            generation: self.generation,
            eject: self.eject_tx.clone(),
            held: Arc::default(),
        };
        self.active.insert(addr, self.generation);
        self.publish();
        self.send(Change::Insert(addr, PendingRequests::new(service, CompleteOnResponse::default()))).await;
    }

    async fn remove(&mut self, addr: SocketAddr) {
        if self.active.remove(&addr).is_some() {
            self.publish();
            self.send(Change::Remove(addr)).await;
        }
    }

    fn publish(&self) {
        self.endpoints.store(self.active.len(), Ordering::Relaxed);
        metrics::gauge!("shopmesh_client_endpoints", "target" => self.target.to_string())
            .set(self.active.len() as f64);
    }

    async fn reconcile(&mut self, set: BTreeSet<SocketAddr>) {
        if set != self.resolved {
            tracing::info!(upstream = %self.target, endpoints = ?set, "endpoints changed");
        }
        let gone: Vec<_> = self.resolved.difference(&set).copied().collect();
        for addr in gone {
            self.ejected.remove(&addr);
            self.ejections.remove(&addr);
            self.remove(addr).await;
        }
        let new: Vec<_> = set
            .iter()
            .filter(|a| !self.active.contains_key(a) && !self.ejected.contains_key(a))
            .copied()
            .collect();
        for addr in new {
            self.insert(addr).await;
        }
        self.resolved = set;
    }

    async fn eject(&mut self, eject: Eject) {
        if self.active.get(&eject.addr) != Some(&eject.generation) {
            return; // already out, or a newer service for the address
        }
        if self.active.len() <= 1 {
            tracing::warn!(upstream = %self.target, addr = %eject.addr, "endpoint keeps failing but is the last one; not ejecting it");
            eject.held.release();
            return;
        }
        let times = self.ejections.entry(eject.addr).or_insert(0);
        *times += 1;
        let period = self.config.eject_time.saturating_mul(1 << (*times - 1).min(16)).min(MAX_EJECTION);
        tracing::warn!(upstream = %self.target, addr = %eject.addr, ?period, "ejecting an endpoint after consecutive failures");
        metrics::counter!("shopmesh_client_ejections_total", "target" => self.target.to_string())
            .increment(1);
        self.ejected.insert(eject.addr, Instant::now() + period);
        self.remove(eject.addr).await;
    }

    async fn return_ejected(&mut self) {
        let now = Instant::now();
        let due: Vec<_> = self.ejected.iter().filter(|(_, until)| **until <= now).map(|(a, _)| *a).collect();
        for addr in due {
            self.ejected.remove(&addr);
            if self.resolved.contains(&addr) {
                tracing::info!(upstream = %self.target, %addr, "returning an ejected endpoint");
                self.insert(addr).await;
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_to_names() {
        let Ok(Source::Dns(names)) = Source::parse("http://user:50051, http://10.0.0.7:7,http://[::1]:9")
        else {
            panic!("parses");
        };
        assert_eq!(names, [("user".to_owned(), 50051), ("10.0.0.7".to_owned(), 7), ("::1".to_owned(), 9)]);
        for bad in ["", "user:50051", "https://user:1", "http://user", "http://"] {
            assert!(Source::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn dns_names_resolve_to_all_addresses() {
        let set = resolve(&[("localhost".into(), 4242), ("127.0.0.9".into(), 5)]).await.expect("resolves");
        assert!(set.contains(&"127.0.0.1:4242".parse().expect("addr")), "{set:?}");
        assert!(set.contains(&"127.0.0.9:5".parse().expect("addr")), "{set:?}");
        assert_eq!(resolve(&[("name.invalid".into(), 1)]).await, None);
    }
}
