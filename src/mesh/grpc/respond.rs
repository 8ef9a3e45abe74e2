//! The one place where the mesh's own layers turn a failure into a gRPC status (the shape of
//! linkerd2-proxy's `errors/respond.rs`): each layer says *why* it answers a call itself, as a
//! [`Refusal`], and this module says what the caller is told. Handlers' errors are each
//! service's own `error.rs`; the handler's kit for them is [`crate::mesh::status`].

use std::time::Duration;

use http::Response;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// Why a layer answered a call without the handler (or, on the client side, without an answer
/// from the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Authorization is on and the caller presented no mesh identity.
    NoIdentity,
    /// The authorization policy does not let `caller` (its SPIFFE ID, if any) call `path`.
    NotAllowed {
        /// The caller's identity.
        caller: Option<String>,
        /// The method called.
        path: String,
    },
    /// A bearer token was required and missing, or did not verify. Every such call gets one
    /// message: which check failed is logged, never sent, so a caller probing with forged
    /// tokens learns nothing.
    BadToken,
    /// An edge (a workload the policy names as acting for end users) called without a user's
    /// bearer token.
    EdgeWithoutToken,
    /// More calls in progress than the server takes at once.
    Overloaded,
    /// Request messages being read already fill `bound`'s share of the server's read buffer
    /// (`connection`, `caller` or `server`); answered at once, nothing is held.
    ReadBufferFull {
        /// Whose share is full.
        bound: &'static str,
    },
    /// The caller sent more tokens not seen before than its share of signature checks; it may
    /// retry after `retry_after`.
    TooManyNewTokens {
        /// When the caller may have another token checked.
        retry_after: Duration,
    },
    /// The caller is over its rate; it may retry after `retry_after`.
    RateLimited {
        /// When the caller's bucket has a token again.
        retry_after: Duration,
    },
    /// The request's metadata is larger than the server accepts.
    MetadataTooLarge {
        /// The metadata's size, counted as HTTP/2 counts a header list.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The request message is larger than the server accepts (seen before decoding).
    MessageTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request message did not arrive within the server's read timeout.
    RequestReadTimeout,
    /// The request stream failed (reset by the client) before its message arrived.
    RequestBroken,
    /// The service's database is not ready yet.
    NotReady,
    /// The server ran out of the caller's deadline while handling the call.
    DeadlineWhileHandling,
    /// No time was left to send the call.
    DeadlineBeforeSending,
    /// The deadline passed while waiting for the server's answer.
    DeadlineWhileWaiting,
    /// The target has no endpoints to send the call to.
    NoEndpoints {
        /// The target, as configured.
        target: String,
    },
    /// The connection failed or broke under the call; `cause` is the error and its sources,
    /// as one line.
    ConnectionFailed {
        /// What the transport said.
        cause: String,
    },
    /// The request message does not decode (invalid UTF-8 in a string field, a malformed
    /// varint, no message at all). The decoder's words name fields and types: they are not
    /// sent.
    Undecodable,
    /// A service this one called failed in a way its caller may retry or act on (`code`:
    /// UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED). The caller is told which
    /// dependency and how, never the transport's chain (addresses, OS errors).
    DependencyFailed {
        /// The dependency's short name.
        service: String,
        /// The code passed on.
        code: Code,
    },
}

/// RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms`, the time until a retry would be admitted.
fn pushback(retry_after: Duration, message: &'static str) -> Status {
    // Rounded up, so a client that waits exactly this long finds a token.
    let ms = retry_after.as_nanos().div_ceil(1_000_000).max(1);
    let mut metadata = MetadataMap::new();
    if let Ok(value) = MetadataValue::try_from(ms.to_string()) {
        metadata.insert("grpc-retry-pushback-ms", value);
    }
    Status::with_metadata(Code::ResourceExhausted, message, metadata)
}

impl Refusal {
    /// What the caller is told.
    pub fn status(&self) -> Status {
        match self {
            Self::NoIdentity => Status::unauthenticated(
                "no client identity: this server requires a mutual TLS client certificate",
            ),
            Self::NotAllowed { caller, path } => Status::permission_denied(format!(
                "{} may not call {path}",
                caller.as_deref().unwrap_or("the caller")
            )),
            Self::BadToken => Status::unauthenticated("missing or invalid bearer token"),
            Self::EdgeWithoutToken => Status::unauthenticated(
                "this caller acts for end users (an edge in the authorization policy): every call \
                 must carry the user's bearer token",
            ),
            Self::Overloaded => {
                Status::resource_exhausted("server overloaded: too many calls in progress, retry later")
            }
            Self::ReadBufferFull { bound } => Status::resource_exhausted(format!(
                "request messages being read fill this {bound}'s share of the server's read buffer; \
                 finish or cancel calls in progress, then retry"
            )),
            Self::RateLimited { retry_after } => pushback(
                *retry_after,
                "rate limit exceeded for this caller; retry after grpc-retry-pushback-ms",
            ),
            Self::TooManyNewTokens { retry_after } => pushback(
                *retry_after,
                "too many bearer tokens not seen before from this caller; retry after grpc-retry-pushback-ms",
            ),
            Self::MetadataTooLarge { size, limit } => Status::resource_exhausted(format!(
                "request metadata is {size} bytes, over this server's limit of {limit} bytes"
            )),
            Self::MessageTooLarge { limit } => Status::resource_exhausted(format!(
                "request message larger than this server's limit of {limit} bytes"
            )),
            Self::RequestReadTimeout => Status::deadline_exceeded(
                "the request message did not arrive within this server's read timeout",
            ),
            Self::RequestBroken => Status::cancelled("the request stream ended before its message arrived"),
            Self::NotReady => Status::unavailable("starting: the service's database is not ready yet"),
            Self::DeadlineWhileHandling => {
                Status::deadline_exceeded("deadline exceeded while the server was handling the call")
            }
            Self::DeadlineBeforeSending => {
                Status::deadline_exceeded("deadline exceeded before the call was sent")
            }
            Self::DeadlineWhileWaiting => {
                Status::deadline_exceeded("deadline exceeded waiting for the answer")
            }
            Self::NoEndpoints { target } => Status::unavailable(format!("no endpoints for {target}")),
            Self::ConnectionFailed { cause } => Status::unavailable(format!("connection failed: {cause}")),
            Self::Undecodable => Status::invalid_argument("the request message is malformed"),
            Self::DependencyFailed { service, code } => {
                let what = match code {
                    Code::DeadlineExceeded => "dependency did not answer in time",
                    Code::ResourceExhausted => "dependency overloaded",
                    _ => "dependency unavailable",
                };
                Status::new(*code, format!("{service}: {what}"))
            }
        }
    }

    /// The refusal as a trailers-only gRPC response.
    pub fn respond<B: Default>(&self) -> Response<B> {
        self.status().into_http()
    }

    /// What a failed call's transport error means to its caller: tonic's own timer running out
    /// (its connection enforces `grpc-timeout` too) is a deadline; a connection that failed or
    /// broke under the call (refused, reset, closed) is UNAVAILABLE, where tonic alone would
    /// say UNKNOWN ("transport error"), which callers cannot act on. `None` for an error that
    /// already is a status.
    pub fn of_transport_error(err: &(dyn std::error::Error + 'static)) -> Option<Self> {
        if err.is::<Status>() {
            return None;
        }
        if is_timeout(err) {
            return Some(Self::DeadlineWhileWaiting);
        }
        let mut cause = err.to_string();
        let mut source = err.source();
        while let Some(next) = source {
            cause.push_str(": ");
            cause.push_str(&next.to_string());
            source = next.source();
        }
        Some(Self::ConnectionFailed { cause })
    }
}

/// Whether `err` (or one of its causes) is a failure to connect (refused, unreachable, the TLS
/// handshake): the endpoint is not there, unlike a connection it closed gracefully.
pub fn connect_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<tonic::ConnectError>(err)
}

/// Whether `err` (or one of its causes) says the call never reached a server's handler, so
/// sending it again is safe whatever its method:
/// - no connection could be made (refused, unreachable, the TLS handshake);
/// - the connection closed before hyper wrote the request (hyper's "canceled": "connection
///   closed", "connection was not ready"; over HTTP/2 hyper cancels only requests not yet
///   written). This is what a caller sees when a pod it is connected to shuts down while the
///   caller's next calls wait for that connection, and what gRPC's C core reports UNAVAILABLE;
/// - the server refused the stream unprocessed: `REFUSED_STREAM`, or a graceful `GOAWAY` whose
///   last stream id excludes it (RFC 9113 §6.8: such streams were not processed).
pub fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |err| err.source()).any(|err| {
        connect_failed(err)
            || err.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled)
            || err.downcast_ref::<h2::Error>().is_some_and(refused_unprocessed)
    })
}

/// A stream the server says it never processed.
fn refused_unprocessed(err: &h2::Error) -> bool {
    match err.reason() {
        Some(h2::Reason::REFUSED_STREAM) => err.is_remote(),
        Some(h2::Reason::NO_ERROR) => err.is_go_away() && err.is_remote(),
        _ => false,
    }
}

/// Whether `err` (or one of its causes) is tonic's own timer running out.
pub fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<tonic::TimeoutExpired>(err)
}

/// Whether `err` or one of its causes is an `E`.
fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |err| err.source()).any(|err| err.is::<E>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod that shuts down closes its connections; the calls a client had queued for one are
    /// failed by hyper before they are written ("canceled"). tonic calls that CANCELLED; it was
    /// never sent, so it is safe to send again, whatever the method.
    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn a_request_hyper_never_wrote_was_never_sent() {
        let err = crate::mesh::testing::request_never_written().await;
        assert!(err.is_canceled(), "hyper cancels it: {err:?}");
        assert!(never_sent(&err));
        let status = tonic::Status::from_error(Box::new(err));
        assert_eq!(status.code(), Code::Cancelled, "what tonic makes of it");
        assert!(never_sent(&status), "found through the status's source");
        // What a server answers is not a transport error.
        assert!(!never_sent(&tonic::Status::cancelled("operation was canceled")));
        assert!(!never_sent(&std::io::Error::other("connection reset")));
    }

    #[test]
    fn refusals_carry_their_codes() {
        let cases = [
            (Refusal::NoIdentity, Code::Unauthenticated),
            (Refusal::NotAllowed { caller: None, path: "/a.B/C".into() }, Code::PermissionDenied),
            (Refusal::BadToken, Code::Unauthenticated),
            (Refusal::EdgeWithoutToken, Code::Unauthenticated),
            (Refusal::Overloaded, Code::ResourceExhausted),
            (Refusal::ReadBufferFull { bound: "connection" }, Code::ResourceExhausted),
            (Refusal::TooManyNewTokens { retry_after: Duration::from_millis(3) }, Code::ResourceExhausted),
            (Refusal::RateLimited { retry_after: Duration::from_micros(1500) }, Code::ResourceExhausted),
            (Refusal::MetadataTooLarge { size: 9, limit: 8 }, Code::ResourceExhausted),
            (Refusal::MessageTooLarge { limit: 8 }, Code::ResourceExhausted),
            (Refusal::RequestReadTimeout, Code::DeadlineExceeded),
            (Refusal::RequestBroken, Code::Cancelled),
            (Refusal::NotReady, Code::Unavailable),
            (Refusal::DeadlineWhileHandling, Code::DeadlineExceeded),
            (Refusal::DeadlineBeforeSending, Code::DeadlineExceeded),
            (Refusal::DeadlineWhileWaiting, Code::DeadlineExceeded),
            (Refusal::NoEndpoints { target: "x".into() }, Code::Unavailable),
            (Refusal::ConnectionFailed { cause: "reset".into() }, Code::Unavailable),
            (Refusal::Undecodable, Code::InvalidArgument),
            (
                Refusal::DependencyFailed { service: "payment".into(), code: Code::Unavailable },
                Code::Unavailable,
            ),
            (
                Refusal::DependencyFailed { service: "user".into(), code: Code::DeadlineExceeded },
                Code::DeadlineExceeded,
            ),
        ];
        for (refusal, code) in cases {
            assert_eq!(refusal.status().code(), code, "{refusal:?}");
            let response: Response<()> = refusal.respond();
            assert_eq!(crate::mesh::grpc::code::header_code(&response), Some(code), "{refusal:?}");
        }
        let limited = Refusal::RateLimited { retry_after: Duration::from_micros(1500) }.status();
        assert_eq!(
            limited.metadata().get("grpc-retry-pushback-ms").map(|v| v.to_str().ok()),
            Some(Some("2"))
        );
    }

    #[test]
    fn transport_errors_are_classified() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            Refusal::of_transport_error(&io),
            Some(Refusal::ConnectionFailed { cause: "refused".into() })
        );
        let status = Status::internal("x");
        assert_eq!(Refusal::of_transport_error(&status), None);
        assert_eq!(
            Refusal::of_transport_error(&tonic::TimeoutExpired(())),
            Some(Refusal::DeadlineWhileWaiting)
        );
    }
}
