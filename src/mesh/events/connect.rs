//! Reaching the NATS server: the first attempt at start, and the wait for a broker that is not
//! up yet. A broker that cannot be reached (refused, a name not resolving yet, a timeout) does
//! not stop the start: the service serves its calls (their events wait in the outbox, as when
//! the broker goes down later), logs one WARN, tries again with a capped backoff, and once
//! connected ensures its streams and starts its relay's publishing and its consumers. What
//! waiting cannot fix (a malformed URL, credentials refused, no JetStream) stops the start,
//! or the service when it is found later.
//!
//! `shopmesh_events_broker_connected` is 1 while the client is connected, 0 while not.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, ErrorCode, context::CreateStreamErrorKind, stream};
use async_nats::{ConnectErrorKind, ConnectOptions};

use crate::mesh::Error;
use crate::mesh::db::redact;
use crate::mesh::events::{DEAD_LETTER, Stream};

/// How long one attempt to connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before the second attempt; each next one doubles it, up to [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between two attempts.
const LAST_RETRY: Duration = Duration::from_secs(5);

/// How long JetStream drops a re-published event id (a relay that published and died before
/// marking its row): longer than a relay's retries of one batch.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Where a connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Not connected yet: trying again.
    Waiting,
    /// Connected, the streams ensured.
    Connected,
    /// Refused for good (the message says why): the service stops.
    Failed(String),
}

/// The JetStream context once connected, and the status others wait on.
#[derive(Debug)]
pub(super) struct Link {
    js: OnceLock<jetstream::Context>,
    status: tokio::sync::watch::Sender<Status>,
    replicas: usize,
}

/// Why an attempt failed, and whether trying again may help.
struct Failure {
    error: Error,
    transient: bool,
}

/// An [`Error::Config`] saying what the broker refused, and why.
pub(super) fn broker_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("events broker: {what}: {e}"))
}

impl Link {
    /// Connects to `url` and ensures `streams` (and the dead letters'). A broker not reachable
    /// yet gives a link that keeps trying in the background.
    ///
    /// # Errors
    /// [`Error::Config`] for what waiting cannot fix: a malformed URL, credentials refused, a
    /// server without JetStream.
    pub(super) async fn connect(url: &str, replicas: u16, streams: &[Stream]) -> Result<Arc<Self>, Error> {
        let link = Arc::new(Self {
            js: OnceLock::new(),
            status: tokio::sync::watch::Sender::new(Status::Waiting),
            replicas: usize::from(replicas),
        });
        let mut streams = streams.to_vec();
        streams.push(DEAD_LETTER);
        match link.attempt(url, &streams).await {
            Ok(()) => Ok(link),
            Err(Failure { error, transient: false }) => Err(error),
            Err(Failure { error, transient: true }) => {
                tracing::warn!(
                    url = %redact(url), error = %error,
                    "events broker not reachable: serving without it and trying again; events wait in the outbox, consumers start once it is reached"
                );
                tokio::spawn(link.clone().wait(url.to_owned(), streams));
                Ok(link)
            }
        }
    }

    /// Tries again with a capped backoff until connected or refused for good.
    async fn wait(self: Arc<Self>, url: String, streams: Vec<Stream>) {
        let mut delay = FIRST_RETRY;
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(LAST_RETRY);
            match self.attempt(&url, &streams).await {
                Ok(()) => {
                    tracing::info!(url = %redact(&url), "events broker connected");
                    return;
                }
                Err(Failure { error, transient: true }) => {
                    tracing::debug!(error = %error, "events broker still not reachable");
                }
                Err(Failure { error, transient: false }) => {
                    // Whoever awaits `failed` (the process) reports it as it stops.
                    let why = match error {
                        Error::Config(why) => why,
                        other => other.to_string(),
                    };
                    self.status.send_replace(Status::Failed(why));
                    return;
                }
            }
        }
    }

    async fn attempt(&self, url: &str, streams: &[Stream]) -> Result<(), Failure> {
        let client = credentials(url, ConnectOptions::new())
            .name("shopmesh")
            .connection_timeout(CONNECT_TIMEOUT)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => connected_gauge().set(1.0),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => connected_gauge().set(0.0),
                    _ => {}
                }
            })
            .connect(url)
            .await
            .map_err(|e| {
                connected_gauge().set(0.0);
                let transient = matches!(
                    e.kind(),
                    ConnectErrorKind::Io | ConnectErrorKind::TimedOut | ConnectErrorKind::Dns
                );
                Failure { error: broker_error(&format!("cannot connect to {}", redact(url)), e), transient }
            })?;
        let js = jetstream::new(client);
        for stream in streams {
            ensure(&js, self.replicas, *stream).await.map_err(|e| Failure {
                transient: forming(&e.kind()),
                error: broker_error(&format!("stream {} (is JetStream enabled?)", stream.name), e),
            })?;
        }
        connected_gauge().set(1.0);
        // Only this link's attempts set it, one at a time.
        let _ = self.js.set(js);
        self.status.send_replace(Status::Connected);
        Ok(())
    }

    /// The context, when connected.
    pub(super) fn js(&self) -> Option<&jetstream::Context> {
        self.js.get()
    }

    /// The context once connected.
    ///
    /// # Errors
    /// Why the broker refused this service for good.
    pub(super) async fn connected(&self) -> Result<&jetstream::Context, Error> {
        let mut status = self.status.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let reached = status.wait_for(|s| *s != Status::Waiting).await.map(|s| Status::clone(&s));
        match (reached, self.js.get()) {
            (Ok(Status::Failed(why)), _) => Err(Error::Config(why)),
            (_, Some(js)) => Ok(js),
            (_, None) => Err(Error::Config("events broker: not connected".into())),
        }
    }

    /// Completes with the reason when the broker refuses this service for good after the start.
    pub(super) async fn failed(&self) -> Error {
        let mut status = self.status.subscribe();
        match status.wait_for(|s| matches!(s, Status::Failed(_))).await.map(|s| Status::clone(&s)) {
            Ok(Status::Failed(why)) => Error::Config(why),
            _ => std::future::pending().await,
        }
    }
}

/// Whether creating a stream failed because JetStream is still starting: a server that does not
/// answer in time yet, a cluster without a meta leader yet (503, "JetStream system temporarily
/// unavailable") or without enough peers yet for the replicas. What else it refuses (no
/// JetStream at all: nothing answers its API) waiting does not fix.
fn forming(kind: &CreateStreamErrorKind) -> bool {
    match kind {
        CreateStreamErrorKind::TimedOut => true,
        CreateStreamErrorKind::JetStream(e) => {
            e.code() == 503
                || [ErrorCode::CLUSTER_NOT_AVAILABLE, ErrorCode::CLUSTER_NO_PEERS].contains(&e.error_code())
        }
        _ => false,
    }
}

/// `shopmesh_events_broker_connected`: 1 while this process reaches its broker (the in-process
/// bus always does), 0 while not; absent without a broker (`--events-url none`).
pub(super) fn connected_gauge() -> metrics::Gauge {
    metrics::gauge!("shopmesh_events_broker_connected")
}

/// Makes sure `stream` exists (file storage, `replicas`, a dedup window for `Nats-Msg-Id`).
pub(super) async fn ensure(
    js: &jetstream::Context,
    replicas: usize,
    stream: Stream,
) -> Result<jetstream::stream::Stream, jetstream::context::CreateStreamError> {
    js.get_or_create_stream(stream::Config {
        name: stream.name.to_owned(),
        subjects: vec![stream.subjects.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
}

/// The URL's `user:password@` (or `token@`) as the options' credentials: async-nats sends only
/// those of the options, so a server requiring them refused a URL that carried them.
fn credentials(url: &str, options: ConnectOptions) -> ConnectOptions {
    let Ok(addr) = url.parse::<async_nats::ServerAddr>() else {
        return options; // `connect` reports the malformed URL
    };
    match (addr.username(), addr.password()) {
        (Some(user), Some(password)) => options.user_and_password(user.to_owned(), password.to_owned()),
        (Some(token), None) => options.token(token.to_owned()),
        _ => options,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL that cannot be a server's stops the start: waiting cannot fix it.
    #[tokio::test]
    async fn a_malformed_url_stops_the_start() {
        let refused = Link::connect("nats://127.0.0.1:99999", 1, &[]).await.err();
        let message = refused.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("cannot connect"), "not refused: {message:?}");
    }
}
