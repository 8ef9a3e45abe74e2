//! The response future of a layer that either hands a call on or answers it at once: refused
//! by authentication, a rate limit, a size limit or a closed readiness gate. One type, instead of
//! the same enum in every such layer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's future, or an answer made without calling it.
    #[project = AnswerProj]
    pub enum Answer<F, ResBody> {
        /// Handed on to the inner service.
        Inner { #[pin] inner: F },
        /// Answered here (taken on the first poll).
        Now { response: Option<Response<ResBody>> },
    }
}

impl<F, ResBody> Answer<F, ResBody> {
    /// The inner service handles the call.
    pub fn inner(inner: F) -> Self {
        Self::Inner { inner }
    }

    /// The call is answered with `response`, the inner service never called.
    pub fn now(response: Response<ResBody>) -> Self {
        Self::Now { response: Some(response) }
    }
}

impl<F, ResBody, E> Future for Answer<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnswerProj::Inner { inner } => inner.poll(cx),
            AnswerProj::Now { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}
