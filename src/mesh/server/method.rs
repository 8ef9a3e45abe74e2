//! Server layer: looks the call's path up in the method catalogue once and puts the
//! [`Method`] in the request's extensions, where every layer below reads its names (labels,
//! span) and whether it is infrastructure (never shed, gated or asked for a token).

use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use crate::mesh::grpc::catalogue::Catalogue;

/// Puts the called [`Method`] (or [`Method::UNKNOWN`]) into each request.
#[derive(Debug, Clone, Copy)]
pub struct MethodLayer {
    catalogue: Catalogue,
}

impl MethodLayer {
    /// Looks calls up in `catalogue`.
    pub fn new(catalogue: Catalogue) -> Self {
        Self { catalogue }
    }
}

impl<S> Layer<S> for MethodLayer {
    type Service = MethodLookup<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MethodLookup { inner, catalogue: self.catalogue }
    }
}

/// See [`MethodLayer`].
#[derive(Debug, Clone)]
pub struct MethodLookup<S> {
    inner: S,
    catalogue: Catalogue,
}

impl<S, B> Service<Request<B>> for MethodLookup<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let method = self.catalogue.method(request.uri().path());
        request.extensions_mut().insert(method);
        self.inner.call(request)
    }
}
