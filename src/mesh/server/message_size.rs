//! Oversized messages answer RESOURCE_EXHAUSTED, as gRPC specifies and as every other gRPC
//! implementation does; tonic's decoder answers OUT_OF_RANGE, so this layer rewrites exactly
//! that answer (recognised by tonic's message) and leaves every other status alone.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// The start of tonic's (percent-encoded) `grpc-message` for a request over the size limit.
const TONIC_TOO_LARGE: &[u8] = b"Error,%20decoded%20message%20length%20too%20large";

/// Turns tonic's OUT_OF_RANGE for an oversized request into RESOURCE_EXHAUSTED.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageSizeLayer;

impl<S> Layer<S> for MessageSizeLayer {
    type Service = MessageSize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageSize { inner }
    }
}

/// See [`MessageSizeLayer`].
#[derive(Debug, Clone)]
pub struct MessageSize<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for MessageSize<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ResponseFuture { inner: self.inner.call(request) }
    }
}

pin_project! {
    /// The response of a [`MessageSize`] service.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut result = ready!(self.project().inner.poll(cx));
        if let Ok(response) = &mut result {
            let headers = response.headers_mut();
            let too_large = headers.get("grpc-status").is_some_and(|c| c == "11")
                && headers.get("grpc-message").is_some_and(|m| m.as_bytes().starts_with(TONIC_TOO_LARGE));
            if too_large {
                headers.insert("grpc-status", HeaderValue::from_static("8"));
            }
        }
        Poll::Ready(result)
    }
}
