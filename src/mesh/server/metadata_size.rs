//! A bound on a request's metadata, answered RESOURCE_EXHAUSTED as gRPC's own servers do.
//!
//! HTTP/2 has a header-list limit too, but a request over it is refused by h2 with HTTP 431
//! and no `grpc-status`, which a tonic client reports as an unhelpful status (see the README's
//! "Limits"). So the server advertises a higher hard cap to h2
//! ([`ServerConfig::http2_header_list_cap`](crate::mesh::config::ServerConfig::http2_header_list_cap))
//! and this layer enforces the configured limit with a proper gRPC answer.

use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::mesh::grpc::answer::Answer;
use crate::mesh::grpc::respond::Refusal;

/// What HTTP/2 adds to each header field's name and value when sizing a header list
/// (RFC 9113, SETTINGS_MAX_HEADER_LIST_SIZE).
const PER_FIELD: usize = 32;

/// The size of `request`'s header list as HTTP/2 counts it, pseudo-headers included.
fn header_list_size<B>(request: &Request<B>) -> usize {
    let uri = request.uri();
    let pseudo = [
        (":method", request.method().as_str().len()),
        (":scheme", uri.scheme_str().map_or(0, str::len)),
        (":authority", uri.authority().map_or(0, |a| a.as_str().len())),
        (":path", uri.path_and_query().map_or(0, |p| p.as_str().len())),
    ];
    let pseudo: usize = pseudo.iter().map(|(name, len)| name.len() + len + PER_FIELD).sum();
    let fields: usize =
        request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + PER_FIELD).sum();
    pseudo + fields
}

/// Refuses requests whose metadata is larger than a limit.
#[derive(Debug, Clone, Copy)]
pub struct MetadataSizeLayer {
    limit: usize,
}

impl MetadataSizeLayer {
    /// At most `limit` bytes of metadata per request, counted as HTTP/2 counts a header list.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for MetadataSizeLayer {
    type Service = MetadataSize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetadataSize { inner, limit: self.limit }
    }
}

/// See [`MetadataSizeLayer`].
#[derive(Debug, Clone)]
pub struct MetadataSize<S> {
    inner: S,
    limit: usize,
}

impl<S, B, ResBody> Service<Request<B>> for MetadataSize<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let size = header_list_size(&request);
        if size <= self.limit {
            return ResponseFuture::inner(self.inner.call(request));
        }
        tracing::debug!(path = request.uri().path(), size, limit = self.limit, "metadata too large");
        ResponseFuture::refuse(&Refusal::MetadataTooLarge { size, limit: self.limit })
    }
}

/// The response of a [`MetadataSize`] service: handed on, or answered at once.
pub type ResponseFuture<F, ResBody> = Answer<F, ResBody>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_count_every_field_as_http2_does() {
        let r = Request::builder()
            .method("POST")
            .uri("http://h:1/a.B/C")
            .header("x-a", "12345")
            .body(())
            .expect("request");
        let expected = (7 + 4 + 32) + (7 + 4 + 32) + (10 + 3 + 32) + (5 + 6 + 32) + (3 + 5 + 32);
        assert_eq!(header_list_size(&r), expected);
    }
}
