//! The response future of every layer that either hands a call on or answers it at once
//! (refused by authorization, shedding, a size or rate limit, a closed readiness gate, a
//! deadline, a target without endpoints): one type, instead of the same enum in every layer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::mesh::grpc::respond::Refusal;

pin_project! {
    /// Either the inner service's future (with a `guard` held until the answer, such as a
    /// concurrency permit), or an answer made without calling it.
    #[project = AnswerProj]
    pub enum Answer<F, ResBody, G = ()> {
        /// Handed on to the inner service.
        Inner { #[pin] inner: F, guard: G },
        /// Answered here (taken on the first poll).
        Now { response: Option<Response<ResBody>> },
    }
}

impl<F, ResBody> Answer<F, ResBody> {
    /// The inner service handles the call.
    pub fn inner(inner: F) -> Self {
        Self::Inner { inner, guard: () }
    }
}

impl<F, ResBody, G> Answer<F, ResBody, G> {
    /// The inner service handles the call while `guard` is held.
    pub fn guarded(inner: F, guard: G) -> Self {
        Self::Inner { inner, guard }
    }

    /// The call is answered with `response`, the inner service never called.
    pub fn now(response: Response<ResBody>) -> Self {
        Self::Now { response: Some(response) }
    }
}

impl<F, ResBody: Default, G> Answer<F, ResBody, G> {
    /// The call is refused, the inner service never called.
    pub fn refuse(refusal: &Refusal) -> Self {
        Self::now(refusal.respond())
    }
}

impl<F, ResBody, E, G> Future for Answer<F, ResBody, G>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnswerProj::Inner { inner, .. } => inner.poll(cx),
            AnswerProj::Now { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}
