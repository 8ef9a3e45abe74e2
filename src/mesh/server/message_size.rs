//! The decoder's answers, put right. Oversized messages answer RESOURCE_EXHAUSTED, as gRPC
//! specifies and as every other gRPC implementation does; tonic's decoder answers OUT_OF_RANGE.
//! A message that does not decode (invalid UTF-8 in a string field, a malformed varint, no
//! message) is the caller's fault, INVALID_ARGUMENT, but tonic answers INTERNAL with prost's
//! words, which name the field and type. This layer rewrites exactly those answers (recognised
//! by tonic's and prost's messages, in a trailers-only response, before any handler ran) and
//! leaves every other status alone; what the caller is told comes from
//! [`respond`](crate::mesh::grpc::respond).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::mesh::grpc::respond::Refusal;

/// The start of tonic's (percent-encoded) `grpc-message` for a request over the size limit.
const TONIC_TOO_LARGE: &[u8] = b"Error,%20decoded%20message%20length%20too%20large";

/// The starts of the (percent-encoded) `grpc-message`s of an INTERNAL from decoding a request:
/// prost's `DecodeError` as tonic-prost reports it, and tonic's for a body without a message.
const UNDECODABLE: [&[u8]; 2] =
    [b"failed%20to%20decode%20Protobuf%20message", b"Missing%20request%20message"];

/// Turns tonic's OUT_OF_RANGE for an oversized request into RESOURCE_EXHAUSTED, and its
/// INTERNAL for an undecodable one into INVALID_ARGUMENT with a generic message.
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
            // Answers with a body carry their status in trailers: one lookup, then nothing.
            let Some(code) = headers.get("grpc-status") else { return Poll::Ready(result) };
            let message = headers.get("grpc-message").map_or(&b""[..], HeaderValue::as_bytes);
            if code == "11" && message.starts_with(TONIC_TOO_LARGE) {
                headers.insert("grpc-status", HeaderValue::from_static("8"));
            } else if code == "13" && UNDECODABLE.iter().any(|start| message.starts_with(start)) {
                tracing::debug!(detail = ?String::from_utf8_lossy(message), "request message does not decode");
                headers.remove("grpc-status-details-bin");
                // Replaces grpc-status and grpc-message; fails only for a status it cannot encode.
                let _ = Refusal::Undecodable.status().add_header(headers);
            }
        }
        Poll::Ready(result)
    }
}
