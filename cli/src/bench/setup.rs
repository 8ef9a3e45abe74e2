//! What a run creates before measuring: its own users (so it needs no data in the mesh) and,
//! when it reads orders, its own orders.

use std::time::Duration;

use futures::StreamExt as _;
use shopmesh::api::user::v1::{CreateUserRequest, user_service_client::UserServiceClient};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::scenario::{Caller, code_name, code_of};

/// Calls made at once while setting up.
const PARALLEL: usize = 16;

/// Sends per user when the user service answers UNAVAILABLE or times out (with the same
/// request id, so a retry never makes a second user).
const ATTEMPTS: u32 = 3;

/// Creates `n` users named after `run_id` and returns their ids, or the first failure when not
/// one could be created. Some failing is only reported: the run goes on with the others.
pub async fn users(
    clients: &[UserServiceClient<Channel>],
    n: u32,
    run_id: &str,
    timeout: Duration,
) -> Result<Vec<String>, Status> {
    let results: Vec<Result<String, Status>> = futures::stream::iter(0..n)
        .map(|i| {
            let mut client = clients[usize::try_from(i).unwrap_or(0) % clients.len()].clone();
            let message = CreateUserRequest {
                email: format!("bench-{run_id}-{i}@example.com"),
                display_name: format!("Bench {i}"),
                request_id: format!("bench-{run_id}-user-{i}"),
            };
            async move {
                let mut attempt = 1;
                loop {
                    let mut request = Request::new(message.clone());
                    request.set_timeout(timeout);
                    match client.create_user(request).await {
                        Ok(user) => return Ok(user.into_inner().id),
                        Err(status)
                            if attempt < ATTEMPTS
                                && matches!(code_of(&status), Code::Unavailable | Code::DeadlineExceeded) =>
                        {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(status) => return Err(status),
                    }
                }
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    let mut first_error = None;
    let mut ids = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(id) => ids.push(id),
            Err(status) => {
                first_error.get_or_insert(status);
            }
        }
    }
    match first_error {
        Some(status) if ids.is_empty() => Err(status),
        Some(status) => {
            eprintln!(
                "warning: {failed} of {n} users could not be created ({}: {}); going on with {}",
                code_name(code_of(&status)),
                status.message(),
                ids.len()
            );
            Ok(ids)
        }
        None => Ok(ids),
    }
}

/// Creates `n` orders through `caller` (so each is in the record file like any CreateOrder)
/// and returns their ids, or the first failure's code when not one could be created.
pub async fn orders(caller: &Caller, n: u32) -> Result<Vec<String>, &'static str> {
    let outcomes: Vec<_> = futures::stream::iter(0..u64::from(n))
        .map(|i| caller.create_order(i))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let failed: Vec<Code> = outcomes.iter().filter(|(_, id)| id.is_none()).map(|(o, _)| o.code).collect();
    let ids: Vec<String> = outcomes.into_iter().filter_map(|(_, id)| id).collect();
    match failed.first() {
        Some(code) if ids.is_empty() => Err(code_name(*code)),
        Some(code) => {
            eprintln!(
                "warning: {} of {n} orders could not be created (first: {}); going on with {}",
                failed.len(),
                code_name(*code),
                ids.len()
            );
            Ok(ids)
        }
        None => Ok(ids),
    }
}
