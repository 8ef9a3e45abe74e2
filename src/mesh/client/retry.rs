//! Retries of outgoing calls, as gRPC's retry design (gRFC A6) and Linkerd do them: only
//! UNAVAILABLE answers and connection failures; only methods the proto marks safe
//! (`idempotency_level`) or calls that carry a `request_id`, except that a call that was never
//! sent (no connection could be made) is sent again whatever its method, and the balancer
//! below has already taken the endpoint that refused it out of its choice; exponential backoff with jitter;
//! never an attempt after the call's deadline; `grpc-retry-pushback-ms` honoured; and a retry
//! budget shared by every call of the channel, so a dependency failing everything sees at most
//! about `1 + ratio` times the load instead of `max_attempts` times.
//!
//! tonic request bodies are streams and requests are not `Clone`: the body of a unary call is
//! small, so it is collected once into `Bytes` and each attempt replays it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use http_body_util::combinators::Collect;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::retry::backoff::{Backoff as _, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff as _};
use tower::retry::budget::{Budget as _, TpsBudget};
use tower::util::Oneshot;
use tower::util::rng::HasherRng;
use tower::{BoxError, Layer, Service};

use crate::mesh::client::call_deadline::CallDeadline;
use crate::mesh::config::{ClientConfig, MAX_ATTEMPTS_CAP};
use crate::mesh::grpc::catalogue::Catalogue;
use crate::mesh::grpc::code::header_code;
use crate::mesh::grpc::respond::{is_timeout, never_sent};
use crate::mesh::grpc::timeout::{GRPC_TIMEOUT, encode_timeout};
use crate::mesh::telemetry::labels;

const PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Adds retries to a client stack; one budget is shared by all clones of the service.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Policy,
}

impl RetryLayer {
    /// Retries as `config` says, of the calls `catalogue` says are repeatable.
    ///
    /// # Errors
    /// A description of the setting that is out of range.
    pub fn new(config: &ClientConfig, catalogue: Catalogue) -> Result<Self, String> {
        let ttl = config.retry_budget_ttl;
        if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(60)).contains(&ttl) {
            return Err(format!("retry budget TTL {ttl:?} must be between 1s and 60s"));
        }
        if !(0.0..=1000.0).contains(&config.retry_budget_ratio) {
            return Err(format!(
                "retry budget ratio {} must be between 0 and 1000",
                config.retry_budget_ratio
            ));
        }
        let backoff = ExponentialBackoffMaker::new(
            config.retry_backoff,
            config.retry_backoff_max.max(config.retry_backoff).max(std::time::Duration::from_millis(1)),
            1.0,
            HasherRng::default(),
        )
        .map_err(|e| format!("retry backoff: {e:?}"))?;
        Ok(Self {
            policy: Policy {
                catalogue,
                max_attempts: config.retry_max_attempts.clamp(1, MAX_ATTEMPTS_CAP),
                budget: Arc::new(TpsBudget::new(
                    ttl,
                    config.retry_budget_min_per_sec,
                    config.retry_budget_ratio,
                )),
                backoff_maker: backoff,
                backoff: None,
                attempts: 1,
            },
        })
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry { inner: tower::retry::Retry::new(self.policy.clone(), inner) }
    }
}

/// See [`RetryLayer`]. Readiness is checked per attempt inside the response future, after the
/// body is collected, so `poll_ready` is always ready.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: tower::retry::Retry<Policy, S>,
}

impl<S> Service<Request<tonic::body::Body>> for Retry<S>
where
    S: Service<Request<Bytes>, Response = Response<tonic::body::Body>, Error = BoxError> + Clone,
{
    type Response = Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let (parts, body) = request.into_parts();
        ResponseFuture::Collecting {
            body: body.collect(),
            parts: Some(parts),
            retry: Some(self.inner.clone()),
        }
    }
}

type Attempts<S> = Oneshot<tower::retry::Retry<Policy, S>, Request<Bytes>>;

pin_project! {
    /// The response of a [`Retry`] service: collect the body, then attempt until done.
    #[project = ResponseFutureProj]
    pub enum ResponseFuture<S>
    where
        S: Service<Request<Bytes>, Response = Response<tonic::body::Body>, Error = BoxError>,
        S: Clone,
    {
        /// Reading the request body into memory.
        Collecting {
            #[pin]
            body: Collect<tonic::body::Body>,
            parts: Option<http::request::Parts>,
            retry: Option<tower::retry::Retry<Policy, S>>,
        },
        /// Attempting the call.
        Attempting { #[pin] attempts: Attempts<S> },
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Request<Bytes>, Response = Response<tonic::body::Body>, Error = BoxError> + Clone,
{
    type Output = Result<Response<tonic::body::Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                ResponseFutureProj::Collecting { body, parts, retry } => {
                    let collected = ready!(body.poll(cx)).map_err(BoxError::from)?;
                    let (Some(parts), Some(retry)) = (parts.take(), retry.take()) else {
                        return Poll::Ready(Err("retry future polled after completion".into()));
                    };
                    let request = Request::from_parts(parts, collected.to_bytes());
                    let attempts = Oneshot::new(retry, request);
                    self.set(ResponseFuture::Attempting { attempts });
                }
                ResponseFutureProj::Attempting { attempts } => return attempts.poll(cx),
            }
        }
    }
}

/// The retry decisions of one call (tower clones the policy for each call).
#[derive(Debug, Clone)]
pub struct Policy {
    catalogue: Catalogue,
    max_attempts: u32,
    budget: Arc<TpsBudget>,
    backoff_maker: ExponentialBackoffMaker,
    backoff: Option<ExponentialBackoff>,
    attempts: u32,
}

/// Whether the gRPC frame `body` holds a message whose top-level field `field` is a non-empty
/// length-delimited value (a set `request_id`), found by walking the wire format.
pub(crate) fn has_string_field(body: &[u8], field: u32) -> bool {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    // A frame: 1 byte compression flag, 4 bytes length, the message.
    let Some(mut message) = body.get(5..) else { return false };
    if body[0] != 0 {
        return false; // compressed: cannot look inside, so treat as unsafe
    }
    while !message.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut message) else { return false };
        if tag == field && wire_type == WireType::LengthDelimited {
            return decode_varint(&mut message).is_ok_and(|len| len > 0);
        }
        if skip_field(wire_type, tag, &mut message, DecodeContext::default()).is_err() {
            return false;
        }
    }
    false
}

impl Policy {
    fn deposit(&self) {
        self.budget.deposit();
    }

    /// Whether a call may be sent again: its method is declared safe, or it carries a request
    /// id.
    fn repeatable(&self, request: &Request<Bytes>) -> bool {
        self.catalogue
            .method(request.uri().path())
            .repeatable(|field| has_string_field(request.body(), field))
    }
}

impl tower::retry::Policy<Request<Bytes>, Response<tonic::body::Body>, BoxError> for Policy {
    type Future = Sleep;

    fn retry(
        &mut self,
        request: &mut Request<Bytes>,
        result: &mut Result<Response<tonic::body::Body>, BoxError>,
    ) -> Option<Self::Future> {
        let mut sent = true;
        let pushback = match result {
            Ok(response) if header_code(response) == Some(tonic::Code::Unavailable) => {
                match response.headers().get(PUSHBACK).map(|v| std::str::from_utf8(v.as_bytes())) {
                    None => None,
                    Some(Ok(ms)) => match ms.parse::<u64>() {
                        Ok(ms) => Some(std::time::Duration::from_millis(ms)),
                        // Negative or unreadable: the server says "do not retry" (gRFC A6).
                        Err(_) => return None,
                    },
                    Some(Err(_)) => return None,
                }
            }
            Ok(_) => return None,
            // No connection could be made: nothing reached a server, so any call may go again.
            Err(err) if never_sent(&**err) => {
                sent = false;
                None
            }
            // Out of time: the deadline layer above answers DEADLINE_EXCEEDED.
            Err(err) if is_timeout(&**err) => return None,
            // The request may not have reached a server (connect failure) or its answer was
            // lost with the connection: only repeatable calls are sent again, checked below.
            Err(_) => None,
        };
        let path = request.uri().path();
        if self.attempts >= self.max_attempts || (sent && !self.repeatable(request)) {
            return None;
        }
        let sleep = match pushback {
            Some(delay) => tokio::time::sleep(delay),
            None => {
                let maker = &mut self.backoff_maker;
                self.backoff.get_or_insert_with(|| maker.make_backoff()).next_backoff()
            }
        };
        let start = sleep.deadline();
        let deadline = request.extensions().get::<CallDeadline>().map(|d| d.0);
        if deadline.is_some_and(|d| start >= d) {
            tracing::debug!(
                path,
                attempts = self.attempts,
                "not retrying: the next attempt would start after the deadline"
            );
            return None;
        }
        if !self.budget.withdraw() {
            tracing::warn!(path, attempts = self.attempts, "retry refused: the retry budget is spent");
            let method = self.catalogue.method(path);
            metrics::counter!(
                "shopmesh_client_retries_refused_total",
                labels::rpc(&method, &[("reason", "budget")])
            )
            .increment(1);
            return None;
        }
        self.attempts += 1;
        tracing::debug!(path, attempt = self.attempts, delay = ?start.saturating_duration_since(Instant::now()), "retrying");
        metrics::counter!("shopmesh_client_retries_total", labels::rpc(&self.catalogue.method(path), &[]))
            .increment(1);
        if let Some(deadline) = deadline {
            // The attempt is sent the time that will be left when it starts.
            request.headers_mut().insert(GRPC_TIMEOUT, encode_timeout(deadline - start));
        }
        Some(sleep)
    }

    fn clone_request(&mut self, request: &Request<Bytes>) -> Option<Request<Bytes>> {
        if self.attempts == 1 {
            // Called once per call before the first attempt: every call earns budget.
            self.deposit();
        }
        if self.attempts >= self.max_attempts {
            return None;
        }
        let mut copy = Request::new(request.body().clone());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::payment::v1::ChargeRequest;

    fn frame(message: &impl prost::Message) -> Vec<u8> {
        let bytes = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&u32::try_from(bytes.len()).expect("small").to_be_bytes());
        out.extend_from_slice(&bytes);
        out
    }

    #[test]
    fn request_ids_are_found_in_the_wire_format() {
        let with = ChargeRequest {
            order_id: "o".into(),
            user_id: "u".into(),
            amount: Some(crate::api::common::v1::Money { currency_code: "USD".into(), amount_minor: 5 }),
            request_id: "key-1".into(),
        };
        assert!(has_string_field(&frame(&with), 4));
        let without = ChargeRequest { request_id: String::new(), ..with.clone() };
        assert!(!has_string_field(&frame(&without), 4));
        // Another field's value is not mistaken for it.
        assert!(!has_string_field(&frame(&without), 9));
        // Compressed or empty frames are never "safe": their fields cannot be read.
        let mut compressed = frame(&with);
        compressed[0] = 1;
        assert!(!has_string_field(&compressed, 4));
        assert!(!has_string_field(&[], 4));
    }

    #[test]
    fn out_of_range_budgets_are_refused() {
        let config = ClientConfig {
            retry_budget_ttl: std::time::Duration::from_millis(10),
            ..ClientConfig::default()
        };
        assert!(RetryLayer::new(&config, Catalogue::EMPTY).is_err());
        let config = ClientConfig { retry_budget_ratio: -1.0, ..ClientConfig::default() };
        assert!(RetryLayer::new(&config, Catalogue::EMPTY).is_err());
        assert!(RetryLayer::new(&ClientConfig::default(), Catalogue::EMPTY).is_ok());
    }
}
