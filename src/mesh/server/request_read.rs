//! Server layer: a call's request message is read in full, within `--request-read-timeout`,
//! before the call goes on to the layers that take a slot (load shedding) and to its handler.
//!
//! Without it a call holds its concurrency slot from its HEADERS on, and a client that sends
//! HEADERS and never DATA holds it until it disconnects: a few connections of such streams
//! lock every other caller out. Read first, a stalled call holds nothing but its stream (which
//! `--max-concurrent-streams` bounds) and is answered DEADLINE_EXCEEDED when the timeout passes.
//!
//! Every method of the API takes one request message (unary or server-streaming), as does
//! `grpc.health.v1`; reflection is a bidirectional stream and passes through unread, as do
//! paths outside the catalogue (the router answers them UNIMPLEMENTED without reading). The
//! message is held as the `Bytes` the connection delivered (one DATA frame, usually: no copy)
//! and handed on as a complete body; reading stops, RESOURCE_EXHAUSTED, past the message size
//! limit plus gRPC's 5-byte frame header.
//!
//! The bytes being read are bounded three times over, so clients sending large messages slowly
//! can neither hold unbounded memory nor lock others out: per connection
//! (`--max-buffered-request-bytes-per-connection`), per caller (its [`CallerKey`]: mesh
//! identity and token subject, else IP address; `--max-buffered-request-bytes-per-caller`),
//! and over the whole port (`--max-buffered-request-bytes`). A caller's bytes count against
//! the port only within its own shares, so one client can take at most its share from the
//! others. A call whose message would go over any of them is answered RESOURCE_EXHAUSTED at
//! once, saying whose share is full. A call's shares are given back when its message is handed
//! on (load shedding bounds what follows) or it is answered.
//!
//! Health checks take no share: their messages are small (at most [`HEALTH_MESSAGE_LIMIT`]
//! bytes, however large API messages may be), so API traffic can never starve a probe. The
//! layer sits below authentication (authz, bearer tokens): a caller that has not proved who
//! it is is refused before it can hold a byte.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{Request, Response};
use http_body::Body as _;
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::mesh::grpc::catalogue::{Method, REFLECTION};
use crate::mesh::grpc::respond::Refusal;
use crate::mesh::identity::CallerKey;
use crate::mesh::server::per_key::{KeyPermit, PerKey};
use crate::mesh::telemetry::labels;
use tonic::transport::server::TcpConnectInfo;

/// gRPC's length-prefixed message framing: a compression flag and a 4-byte length.
const FRAME_HEADER: usize = 5;

/// The largest health-check message read (`HealthCheckRequest` holds a service name).
pub const HEALTH_MESSAGE_LIMIT: usize = 4096;

/// How many bytes of request messages may be being read at once, and by whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBudget {
    /// Over every call of the port.
    pub server: usize,
    /// Over the calls of one connection.
    pub per_connection: usize,
    /// Over the calls of one caller ([`CallerKey`]), on all its connections.
    pub per_caller: usize,
}

/// The shares of the read budget, shared by every call of one port.
#[derive(Debug)]
struct Budgets {
    server: Arc<Semaphore>,
    connections: Arc<PerKey<std::net::SocketAddr>>,
    callers: Arc<PerKey<CallerKey>>,
}

/// Reads each call's request message within `timeout`, at most `max_message_bytes` long.
#[derive(Debug, Clone)]
pub struct RequestReadLayer {
    timeout: Duration,
    limit: usize,
    budgets: Arc<Budgets>,
    health_only: bool,
}

impl RequestReadLayer {
    /// Waits at most `timeout` for a request message of at most `max_message_bytes`, with at
    /// most what `budget` allows being read at once.
    pub fn new(timeout: Duration, max_message_bytes: usize, budget: ReadBudget) -> Self {
        let share = |bytes: usize| u64::try_from(bytes).unwrap_or(u64::MAX);
        Self {
            timeout,
            limit: max_message_bytes.saturating_add(FRAME_HEADER),
            budgets: Arc::new(Budgets {
                server: Arc::new(Semaphore::new(budget.server.clamp(1, Semaphore::MAX_PERMITS))),
                connections: Arc::new(PerKey::new(share(budget.per_connection))),
                callers: Arc::new(PerKey::new(share(budget.per_caller))),
            }),
            health_only: false,
        }
    }

    /// For a port that serves health alone (the probe port): only health messages are read;
    /// every other call goes on unread, to be answered UNIMPLEMENTED by the router.
    #[must_use]
    pub fn health_only(mut self) -> Self {
        self.health_only = true;
        self
    }
}

impl<S> Layer<S> for RequestReadLayer {
    type Service = RequestRead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestRead { inner, layer: self.clone() }
    }
}

/// See [`RequestReadLayer`].
#[derive(Debug, Clone)]
pub struct RequestRead<S> {
    inner: S,
    layer: RequestReadLayer,
}

impl<S, ResBody> Service<Request<Body>> for RequestRead<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let method = Method::of(&request);
        let health = method.infrastructure && !REFLECTION.contains(&method.path);
        if method == Method::UNKNOWN
            || REFLECTION.contains(&method.path)
            || (self.layer.health_only && !health)
        {
            return ResponseFuture::Calling { future: self.inner.call(request) };
        }
        // The service that was made ready goes with the call; a fresh clone stays (tower's rule).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = request.into_parts();
        ResponseFuture::Reading {
            sleep: tokio::time::sleep(self.layer.timeout),
            read: Some(Read {
                inner,
                parts,
                body,
                message: Message::Empty,
                limit: if health {
                    self.layer.limit.min(HEALTH_MESSAGE_LIMIT + FRAME_HEADER)
                } else {
                    self.layer.limit
                },
                method,
                // Health takes no share: its messages are small, and it must never wait on API calls.
                budgets: (!health).then(|| self.layer.budgets.clone()),
                shares: None,
            }),
        }
    }
}

/// The message as it arrives: most arrive in one DATA frame, kept as it came.
#[derive(Debug)]
enum Message {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Message {
    fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(b) => b.len(),
            Self::Many(b) => b.len(),
        }
    }

    fn push(&mut self, data: Bytes) {
        *self = match std::mem::replace(self, Self::Empty) {
            Self::Empty => Self::One(data),
            Self::One(first) => {
                let mut all = BytesMut::with_capacity(first.len() + data.len());
                all.extend_from_slice(&first);
                all.extend_from_slice(&data);
                Self::Many(all)
            }
            Self::Many(mut all) => {
                all.extend_from_slice(&data);
                Self::Many(all)
            }
        };
    }

    fn into_body(self) -> Body {
        match self {
            Self::Empty => Body::empty(),
            Self::One(b) => Body::new(http_body_util::Full::new(b)),
            Self::Many(b) => Body::new(http_body_util::Full::new(b.freeze())),
        }
    }
}

/// A call whose message is being read.
#[derive(Debug)]
pub struct Read<S> {
    inner: S,
    parts: Parts,
    body: Body,
    message: Message,
    limit: usize,
    method: Method,
    /// The port's read budget (`None` for health), and this call's shares of it.
    budgets: Option<Arc<Budgets>>,
    shares: Option<Shares>,
}

/// What one call holds of the read budget.
#[derive(Debug)]
struct Shares {
    caller: KeyPermit<CallerKey>,
    connection: Option<KeyPermit<std::net::SocketAddr>>,
    server: OwnedSemaphorePermit,
}

impl<S> Read<S> {
    /// Counts `n` more bytes of this call's message against its caller's, its connection's and
    /// the port's shares; `Err` names the one that is full (this call then holds nothing).
    fn take(&mut self, n: usize) -> Result<(), &'static str> {
        let Some(budgets) = &self.budgets else { return Ok(()) };
        let amount = u64::try_from(n).unwrap_or(u64::MAX);
        match &mut self.shares {
            None => {
                let caller = budgets
                    .callers
                    .try_acquire(CallerKey::from_extensions(&self.parts.extensions), amount)
                    .ok_or("caller")?;
                let connection =
                    match self.parts.extensions.get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr)
                    {
                        Some(addr) => {
                            Some(budgets.connections.try_acquire(addr, amount).ok_or("connection")?)
                        }
                        None => None,
                    };
                let server = u32::try_from(n)
                    .ok()
                    .and_then(|n| budgets.server.clone().try_acquire_many_owned(n).ok())
                    .ok_or("server")?;
                self.shares = Some(Shares { caller, connection, server });
            }
            Some(shares) => {
                if !shares.caller.try_grow(amount) {
                    return Err("caller");
                }
                if let Some(connection) = &mut shares.connection
                    && !connection.try_grow(amount)
                {
                    return Err("connection");
                }
                let more = u32::try_from(n)
                    .ok()
                    .and_then(|n| budgets.server.clone().try_acquire_many_owned(n).ok())
                    .ok_or("server")?;
                shares.server.merge(more);
            }
        }
        Ok(())
    }
}

pin_project! {
    /// The response of a [`RequestRead`] service: reading the message, then handled (or
    /// answered at once when the message is late, too large or broken off).
    #[project = ResponseFutureProj]
    pub enum ResponseFuture<S, F> {
        /// Waiting for the message.
        Reading { #[pin] sleep: Sleep, read: Option<Read<S>> },
        /// Handed on to the inner service.
        Calling { #[pin] future: F },
    }
}

impl<S, ResBody> ResponseFuture<S, S::Future>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    ResBody: Default,
{
    fn refuse(
        method: Method,
        reason: &'static str,
        refusal: &Refusal,
    ) -> Poll<Result<Response<ResBody>, S::Error>> {
        tracing::debug!(method = method.path, reason, "request message not read; answering the call");
        metrics::counter!(
            "shopmesh_server_request_read_refused_total",
            labels::rpc(&method, &[("reason", reason)])
        )
        .increment(1);
        Poll::Ready(Ok(refusal.respond()))
    }
}

/// The metric's `reason` for a full share of `bound`.
fn bound_reason(bound: &'static str) -> &'static str {
    match bound {
        "caller" => "buffer_full_caller",
        "connection" => "buffer_full_connection",
        _ => "buffer_full_server",
    }
}

impl<S, ResBody> Future for ResponseFuture<S, S::Future>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let read = match self.as_mut().project() {
            ResponseFutureProj::Calling { future } => return future.poll(cx),
            ResponseFutureProj::Reading { sleep, read } => {
                let Some(r) = read.as_mut() else { return Poll::Pending };
                loop {
                    match Pin::new(&mut r.body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Ok(data) = frame.into_data() {
                                if r.message.len() + data.len() > r.limit {
                                    let refusal = Refusal::MessageTooLarge { limit: r.limit - FRAME_HEADER };
                                    return Self::refuse(r.method, "too_large", &refusal);
                                }
                                if let Err(bound) = r.take(data.len()) {
                                    let refusal = Refusal::ReadBufferFull { bound };
                                    return Self::refuse(r.method, bound_reason(bound), &refusal);
                                }
                                r.message.push(data);
                            }
                        }
                        Poll::Ready(None) => break,
                        Poll::Ready(Some(Err(_))) => {
                            return Self::refuse(r.method, "broken", &Refusal::RequestBroken);
                        }
                        Poll::Pending => {
                            if sleep.poll(cx).is_ready() {
                                return Self::refuse(r.method, "timeout", &Refusal::RequestReadTimeout);
                            }
                            return Poll::Pending;
                        }
                    }
                }
                read.take()
            }
        };
        let Some(Read { mut inner, parts, message, .. }) = read else { return Poll::Pending };
        let future = inner.call(Request::from_parts(parts, message.into_body()));
        self.set(Self::Calling { future });
        self.project_calling(cx)
    }
}

impl<S, F> ResponseFuture<S, F> {
    fn project_calling<T>(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T>
    where
        F: Future<Output = T>,
    {
        match self.project() {
            ResponseFutureProj::Calling { future } => future.poll(cx),
            ResponseFutureProj::Reading { .. } => Poll::Pending,
        }
    }
}
