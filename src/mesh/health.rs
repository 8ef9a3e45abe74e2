//! The client side of `grpc.health.v1`: what the `shopmesh` binary and tests use to learn that a
//! service is SERVING.

use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Asks the server at `url` for the status of `service` (`""` for the whole server).
pub async fn check(url: &str, service: &str, timeout: Duration) -> Result<ServingStatus, tonic::Status> {
    let channel = Endpoint::from_shared(url.to_owned())
        .map_err(|e| tonic::Status::invalid_argument(format!("bad URL {url:?}: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("cannot connect to {url}: {e}")))?;
    let reply = HealthClient::new(channel).check(HealthCheckRequest { service: service.to_owned() }).await?;
    Ok(reply.into_inner().status())
}

/// Polls `service` over `channel` (e.g. the mesh's own client, over mutual TLS when it is on)
/// until it is SERVING; `false` if it is not within `within`.
pub async fn wait_serving_on<T>(channel: T, service: &str, within: Duration) -> bool
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut health = HealthClient::new(channel);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut request = tonic::Request::new(HealthCheckRequest { service: service.to_owned() });
        request.set_timeout(left.min(Duration::from_secs(1)));
        if matches!(health.check(request).await.map(|r| r.into_inner().status()), Ok(ServingStatus::Serving))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20).min(left)).await;
    }
}

/// Polls `service` at `url` until it is SERVING; `false` if it is not within `within`.
pub async fn wait_serving(url: &str, service: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let attempt = left.min(Duration::from_secs(1));
        if matches!(check(url, service, attempt).await, Ok(ServingStatus::Serving)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20).min(left)).await;
    }
}
