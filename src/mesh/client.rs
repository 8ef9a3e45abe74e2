//! Client bootstrap: channels to other services and requests that carry a deadline.

use std::time::Duration;

use tonic::Request;
use tonic::transport::{Channel, Endpoint};

use crate::mesh::Error;

/// A lazily connected channel to `url` (`http://host:port`). The first call connects; a
/// dependency that is down at start therefore fails calls with UNAVAILABLE instead of stopping
/// this service from starting.
///
/// `call_timeout` bounds every call on the channel on this side too, as a backstop for calls
/// made without [`with_deadline`].
pub fn channel(url: &str, call_timeout: Duration) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Error::Config(format!("bad service URL {url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(call_timeout)
        .tcp_nodelay(true)
        // Detects a peer that vanished without closing (a killed pod) on an idle connection.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// A request for `message` that sends `grpc-timeout`, so the callee stops working on it when the
/// caller has given up (`Endpoint::timeout` alone only stops waiting on this side).
pub fn with_deadline<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}
