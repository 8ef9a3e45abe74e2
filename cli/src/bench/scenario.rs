//! What the bench calls: the scenarios, the weighted mix, and one call of each kind made with the
//! plain generated clients (so the figures are the servers', not the mesh's client stack).

use std::sync::Arc;
use std::time::Duration;

use super::Channel;
use shopmesh::api::common::v1::Money;
use shopmesh::api::order::v1::{
    CreateOrderRequest, GetOrderRequest, LineItem, OrderState, order_service_client::OrderServiceClient,
};
use shopmesh::api::user::v1::{GetUserRequest, user_service_client::UserServiceClient};
use shopmesh::mesh::grpc::respond::never_sent;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status};

use super::raw::RawCall;
use super::record::Recorder;

/// The load a run applies, named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// OrderService/CreateOrder of products the bench created first: checks the user, prices
    /// the lines from the catalog, writes the order, charges the payment.
    CreateOrder,
    /// OrderService/GetOrder of orders the bench created first.
    GetOrder,
    /// UserService/GetUser of users the bench created first.
    GetUser,
    /// A weighted mix of the three (`--mix`).
    Mix,
    /// Any unary method of any server (`--target`, `--method`, and `--request-json` or
    /// `--request-file`), the same request every call: the scenario that measures the mesh and
    /// other servers, such as the floors it is compared with, with one generator. Creates nothing.
    Call,
}

/// One kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `OrderService/CreateOrder`.
    CreateOrder,
    /// `OrderService/GetOrder`.
    GetOrder,
    /// `UserService/GetUser`.
    GetUser,
    /// The method of `call`.
    Call,
}

impl Op {
    /// The calls a mix is made of.
    const ALL: [Op; 3] = [Op::CreateOrder, Op::GetOrder, Op::GetUser];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::CreateOrder => "create-order",
            Op::GetOrder => "get-order",
            Op::GetUser => "get-user",
            Op::Call => "call",
        }
    }
}

/// Which call the n-th request makes: a fixed sequence with each kind's share equal to its
/// weight, interleaved evenly, so a run of N requests has exactly the shares asked for (give or
/// take one sequence) and no randomness to flake a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// The weights, written out in full (`create-order=1,get-order=0,get-user=6`).
    spec: String,
    sequence: Vec<Op>,
}

impl Mix {
    /// The mix of `--mix` when it is not given.
    pub const DEFAULT: &'static str = "create-order=1,get-order=3,get-user=6";

    /// A mix of one kind of call.
    pub fn only(op: Op) -> Self {
        Self { spec: format!("{}=1", op.name()), sequence: vec![op] }
    }

    /// Parses `create-order=1,get-order=3,get-user=6` (each weight 0 to 1000; kinds left out
    /// weigh 0; at least one positive).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut weights = [0u32; 3];
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not NAME=WEIGHT (e.g. get-user=6)"))?;
            let slot = Op::ALL.iter().position(|op| op.name() == name.trim()).ok_or_else(|| {
                format!("unknown call {:?}: use create-order, get-order or get-user", name.trim())
            })?;
            weights[slot] = weight.trim().parse::<u32>().ok().filter(|w| *w <= 1000).ok_or_else(|| {
                format!("weight {:?} of {name} is not a whole number 0 to 1000", weight.trim())
            })?;
        }
        if weights.iter().all(|w| *w == 0) {
            return Err("at least one weight must be positive".into());
        }
        // Smooth weighted round-robin (as nginx balances): each step the kind with the most
        // credit goes next, so the kinds interleave instead of coming in blocks.
        let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
        let mut credit = [0i64; 3];
        let mut sequence = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            for (c, w) in credit.iter_mut().zip(weights) {
                *c += i64::from(w);
            }
            let best = (0..3).max_by_key(|i| (credit[*i], std::cmp::Reverse(*i))).unwrap_or(0);
            credit[best] -= total;
            sequence.push(Op::ALL[best]);
        }
        let spec =
            Op::ALL.iter().zip(weights).map(|(op, w)| format!("{}={w}", op.name())).collect::<Vec<_>>();
        Ok(Self { spec: spec.join(","), sequence })
    }

    /// The call request number `i` makes.
    pub fn pick(&self, i: u64) -> Op {
        let len = self.sequence.len() as u64;
        self.sequence[usize::try_from(i % len).unwrap_or(0)]
    }

    /// The weights, every kind named.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Whether any request makes `op`.
    pub fn includes(&self, op: Op) -> bool {
        self.sequence.contains(&op)
    }
}

/// The canonical name of a gRPC status code, as the gRPC spec and grpcurl spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The code a failed call counts as. tonic reports its own client-side deadline as CANCELLED
/// ("Timeout expired"), a call hyper never wrote because its connection closed first (a pod
/// shutting down) as CANCELLED, and a connection lost mid-call as UNKNOWN, each with the
/// transport error as source; the server sent none of them, so they count as what they are:
/// DEADLINE_EXCEEDED, and UNAVAILABLE (as gRPC's C core reports a lost connection).
pub fn code_of(status: &Status) -> Code {
    let local = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Cancelled if local && status.message() == tonic::TimeoutExpired(()).to_string() => {
            Code::DeadlineExceeded
        }
        _ if local && never_sent(status) => Code::Unavailable,
        Code::Unknown if local => Code::Unavailable,
        code => code,
    }
}

/// Whether a careful client sends a failed CreateOrder again with the same `request_id`: the
/// server may never have seen it (UNAVAILABLE, lost connection) or may still finish it
/// (DEADLINE_EXCEEDED), and the request id makes the second send safe.
fn retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The final status code.
    pub code: Code,
    /// Sends after the first (CreateOrder with `--retries`).
    pub retries: u32,
}

/// A product the bench orders, as the catalog priced it when the bench set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Its SKU (`BENCH-<n>`).
    pub sku: String,
    /// The catalog's price of one unit, minor units.
    pub amount_minor: i64,
    /// The price's ISO 4217 code.
    pub currency_code: String,
}

/// Everything a request needs: a client per connection to each target, the users, products and
/// orders the bench created, and where CreateOrder outcomes are recorded.
#[derive(Debug)]
pub struct Caller {
    /// One client per connection to the user service.
    pub users: Vec<UserServiceClient<Channel>>,
    /// One client per connection to the order service.
    pub orders: Vec<OrderServiceClient<Channel>>,
    /// The users the bench created.
    pub user_ids: Vec<String>,
    /// The products CreateOrder orders (created first, or found from an earlier run).
    pub products: Vec<Product>,
    /// The orders the bench created for GetOrder.
    pub order_ids: Vec<String>,
    /// Each call's deadline, sent as `grpc-timeout`.
    pub timeout: Duration,
    /// How many times a failed CreateOrder may be sent again.
    pub retries: u32,
    /// Where CreateOrder outcomes go.
    pub recorder: Arc<Recorder>,
    /// Cancelled when the run is asked to stop: calls under way finish, but are not sent again.
    pub stop: CancellationToken,
    /// The method and request of `call`.
    pub raw: Option<RawCall>,
}

/// `items[i % len]`; `items` is never empty where this is used.
fn nth<T>(items: &[T], i: u64) -> &T {
    &items[usize::try_from(i % items.len() as u64).unwrap_or(0)]
}

impl Caller {
    /// Makes request number `i` of kind `op` and says how it ended.
    pub async fn call(&self, op: Op, i: u64) -> Outcome {
        let answer = match op {
            Op::CreateOrder => return self.create_order(i).await.0,
            Op::GetOrder => {
                let mut client = nth(&self.orders, i).clone();
                client
                    .get_order(self.request(GetOrderRequest { id: nth(&self.order_ids, i).clone() }))
                    .await
                    .map(drop)
            }
            Op::GetUser => {
                let mut client = nth(&self.users, i).clone();
                client
                    .get_user(self.request(GetUserRequest { id: nth(&self.user_ids, i).clone() }))
                    .await
                    .map(drop)
            }
            Op::Call => match &self.raw {
                Some(raw) => raw.call(i, self.timeout).await,
                None => Err(Status::failed_precondition("`call` without a method")),
            },
        };
        Outcome { code: answer.err().map_or(Code::Ok, |s| code_of(&s)), retries: 0 }
    }

    /// A request carrying the per-call deadline as `grpc-timeout`.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Creates an order of product `i % products` for user `i % users` with a fresh request id,
    /// sending it again on UNAVAILABLE or DEADLINE_EXCEEDED up to `retries` times, and records
    /// the final outcome. Every other request states the catalog's price as the price it
    /// expects (`unit_price`); the rest send none and let the server price the line, so both
    /// paths carry load. Either way the recorded total is the catalog's price times the
    /// quantity, what the order is stored with. Returns the outcome and, on OK, the order's id.
    pub async fn create_order(&self, i: u64) -> (Outcome, Option<String>) {
        let user_id = nth(&self.user_ids, i).clone();
        let product = nth(&self.products, i);
        // Varied but deterministic quantities of prices far below the processor's default
        // limit, so every order is expected to be PAID.
        let quantity = 1 + i32::try_from(i % 3).unwrap_or(0);
        let expected = i.is_multiple_of(2).then(|| Money {
            currency_code: product.currency_code.clone(),
            amount_minor: product.amount_minor,
        });
        let message = CreateOrderRequest {
            user_id: user_id.clone(),
            line_items: vec![LineItem { sku: product.sku.clone(), quantity, unit_price: expected }],
            request_id: uuid::Uuid::new_v4().to_string(),
        };
        let total = i64::from(quantity).saturating_mul(product.amount_minor);
        let mut entry = self.recorder.start(&message.request_id, &user_id, total, &product.currency_code);
        let mut retries = 0;
        loop {
            // A retry goes out on the next connection, as a client would after losing one.
            let mut client = nth(&self.orders, i + u64::from(retries)).clone();
            entry.attempt();
            match client.create_order(self.request(message.clone())).await {
                Ok(order) => {
                    let order = order.into_inner();
                    let state =
                        OrderState::try_from(order.state).map_or("UNKNOWN_STATE", |s| s.as_str_name());
                    entry.finish_ok(&order.id, state);
                    return (Outcome { code: Code::Ok, retries }, Some(order.id));
                }
                Err(status) => {
                    let code = code_of(&status);
                    if retryable(code) && retries < self.retries && !self.stop.is_cancelled() {
                        retries += 1;
                        let stopped = tokio::select! {
                            () = tokio::time::sleep(backoff(retries)) => false,
                            () = self.stop.cancelled() => true,
                        };
                        if !stopped {
                            continue;
                        }
                    }
                    entry.finish(code_name(code), status.message());
                    return (Outcome { code, retries }, None);
                }
            }
        }
    }
}

/// The wait before retry number `n` (from 1): 50 ms doubled per retry, at most 1 s, with full
/// jitter so that clients failed together do not come back together.
fn backoff(n: u32) -> Duration {
    let ceiling =
        Duration::from_millis(50).saturating_mul(1 << n.saturating_sub(1).min(5)).min(Duration::from_secs(1));
    // A v4 UUID is 122 random bits: enough randomness here without another dependency.
    let fraction = (uuid::Uuid::new_v4().as_u128() % 1024) as f64 / 1024.0;
    ceiling.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_has_the_shares_asked_for_interleaved() {
        let mix = Mix::parse("create-order=1,get-order=3,get-user=6").expect("parses");
        let ops: Vec<Op> = (0..100).map(|i| mix.pick(i)).collect();
        let count = |op| ops.iter().filter(|o| **o == op).count();
        assert_eq!((count(Op::CreateOrder), count(Op::GetOrder), count(Op::GetUser)), (10, 30, 60));
        // Interleaved: never more than two get-user calls in a row at these weights.
        assert!(!ops.windows(3).any(|w| w.iter().all(|o| *o == Op::GetUser)), "{ops:?}");
        let only = Mix::parse("get-user=2").expect("parses");
        assert!((0..10).all(|i| only.pick(i) == Op::GetUser));
        assert!(!only.includes(Op::CreateOrder));
        assert_eq!(only.spec(), "create-order=0,get-order=0,get-user=2");
        assert_eq!(Mix::parse(Mix::DEFAULT).expect("default").spec(), Mix::DEFAULT);
    }

    #[test]
    fn a_bad_mix_is_refused_with_a_reason() {
        assert!(Mix::parse("get-user").expect_err("no weight").contains("NAME=WEIGHT"));
        assert!(Mix::parse("delete-user=1").expect_err("unknown").contains("unknown call"));
        assert!(Mix::parse("get-user=-1").expect_err("negative").contains("0 to 1000"));
        assert!(Mix::parse("get-user=0").expect_err("all zero").contains("positive"));
        assert!(Mix::parse("").is_err());
    }

    /// Seen in rollouts: calls queued for a connection to an order pod that shut down came back
    /// CANCELLED, were counted as failed and not re-sent, though no server had seen them.
    #[tokio::test]
    async fn a_call_never_written_counts_as_unavailable_and_is_sent_again() {
        let status = Status::from_error(Box::new(shopmesh::mesh::testing::request_never_written().await));
        assert_eq!(status.code(), Code::Cancelled, "what tonic says");
        assert_eq!(code_of(&status), Code::Unavailable);
        assert!(retryable(code_of(&status)));
    }

    #[test]
    fn client_side_failures_count_as_what_they_are() {
        let timeout = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(timeout.code(), Code::Cancelled, "what tonic says");
        assert_eq!(code_of(&timeout), Code::DeadlineExceeded);
        let lost = Status::from_error(Box::new(std::io::Error::other("connection closed")));
        assert_eq!(lost.code(), Code::Unknown);
        assert_eq!(code_of(&lost), Code::Unavailable);
        // What a server sends is counted as sent.
        assert_eq!(code_of(&Status::unknown("x")), Code::Unknown);
        assert_eq!(code_of(&Status::cancelled("Timeout expired")), Code::Cancelled);
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for n in 1..10 {
            let cap = Duration::from_millis(50 * (1 << (n - 1).min(5))).min(Duration::from_secs(1));
            assert!(backoff(n) <= cap, "retry {n}");
        }
    }
}
