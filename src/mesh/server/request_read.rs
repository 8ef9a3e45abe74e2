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
//! limit plus gRPC's 5-byte frame header. The bytes being read, over all calls, are bounded
//! (`--max-buffered-request-bytes`): a call whose message would go over is answered
//! RESOURCE_EXHAUSTED, so clients sending large messages slowly cannot hold unbounded memory.
//! A call's share is given back when its message is handed on (load shedding bounds what
//! follows) or it is answered.

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

/// gRPC's length-prefixed message framing: a compression flag and a 4-byte length.
const FRAME_HEADER: usize = 5;

/// Reads each call's request message within `timeout`, at most `max_message_bytes` long.
#[derive(Debug, Clone)]
pub struct RequestReadLayer {
    timeout: Duration,
    limit: usize,
    buffered: Arc<Semaphore>,
}

impl RequestReadLayer {
    /// Waits at most `timeout` for a request message of at most `max_message_bytes`, with at
    /// most `max_buffered_bytes` being read at once over all calls.
    pub fn new(timeout: Duration, max_message_bytes: usize, max_buffered_bytes: usize) -> Self {
        Self {
            timeout,
            limit: max_message_bytes.saturating_add(FRAME_HEADER),
            buffered: Arc::new(Semaphore::new(max_buffered_bytes.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }
}

impl<S> Layer<S> for RequestReadLayer {
    type Service = RequestRead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestRead { inner, timeout: self.timeout, limit: self.limit, buffered: self.buffered.clone() }
    }
}

/// See [`RequestReadLayer`].
#[derive(Debug, Clone)]
pub struct RequestRead<S> {
    inner: S,
    timeout: Duration,
    limit: usize,
    buffered: Arc<Semaphore>,
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
        if method == Method::UNKNOWN || REFLECTION.contains(&method.path) {
            return ResponseFuture::Calling { future: self.inner.call(request) };
        }
        // The service that was made ready goes with the call; a fresh clone stays (tower's rule).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = request.into_parts();
        ResponseFuture::Reading {
            sleep: tokio::time::sleep(self.timeout),
            read: Some(Read {
                inner,
                parts,
                body,
                message: Message::Empty,
                limit: self.limit,
                method,
                buffered: self.buffered.clone(),
                share: None,
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
    /// The server-wide budget of bytes being read, and this call's share of it.
    buffered: Arc<Semaphore>,
    share: Option<OwnedSemaphorePermit>,
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
            "service" => method.service,
            "method" => method.method,
            "reason" => reason,
        )
        .increment(1);
        Poll::Ready(Ok(refusal.respond()))
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
                                let Some(more) = u32::try_from(data.len())
                                    .ok()
                                    .and_then(|n| r.buffered.clone().try_acquire_many_owned(n).ok())
                                else {
                                    return Self::refuse(r.method, "buffer_full", &Refusal::Overloaded);
                                };
                                match &mut r.share {
                                    Some(share) => share.merge(more),
                                    None => r.share = Some(more),
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
