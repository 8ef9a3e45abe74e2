//! What a service is to the mesh, and the one value that joins services to it.
//!
//! [`Mesh`] is built once per process from the mesh-wide settings: it loads the TLS identity,
//! the token verifier and the authorization policy once, serves services
//! ([`server::run`](crate::mesh::server::run)) and opens channels to others ([`Mesh::channel`]).
//! Every service implements [`MeshService`], so the binary has one generic path for running
//! all services in one process, one service, or its migrations.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::mesh::Error;
use crate::mesh::client::local::LocalServers;
use crate::mesh::client::{self, Channel};
use crate::mesh::config::MeshConfig;
use crate::mesh::config::TokenRequirement;
use crate::mesh::db::{Migrations, Pool};
use crate::mesh::events::{Broker, Events};
use crate::mesh::grpc::catalogue::Catalogue;
use crate::mesh::identity::{PeerIdentity, SpiffeId};
use crate::mesh::security::authz::Policy;
use crate::mesh::security::bearer::Verifier;
use crate::mesh::security::tls::MeshTls;
use crate::mesh::upstream::{Upstream, Upstreams};

/// The API a mesh serves and calls, given as data: its method catalogue and the encoded
/// descriptor set that server reflection serves.
#[derive(Debug, Clone, Copy)]
pub struct Api {
    /// Every method, with what its proto says about repeating it.
    pub catalogue: Catalogue,
    /// The `FileDescriptorSet` of every proto file, encoded.
    pub file_descriptor_set: &'static [u8],
}

/// A service of the mesh: its names, its own settings, its migrations, and its routes.
pub trait MeshService: 'static {
    /// Its short name: `shopmesh serve <NAME>`, logs, and `shopmesh-<NAME>` in telemetry.
    const NAME: &'static str;
    /// Its gRPC service's full name, also its health-check name.
    const GRPC_SERVICE: &'static str;
    /// Its embedded migrations.
    const MIGRATIONS: Migrations;
    /// Its own settings (flags and environment variables).
    type Config: clap::Args + clap::FromArgMatches + Clone + fmt::Debug + Send + Sync + 'static;

    /// Where it listens.
    fn listen(config: &Self::Config) -> SocketAddr;

    /// Its database.
    fn database_url(config: &Self::Config) -> &str;

    /// Its replicas' URL (`--<svc>-database-read-url`), where read-only calls may read; none
    /// unless the service has the setting.
    fn database_read_url(_config: &Self::Config) -> Option<&str> {
        None
    }

    /// The services it calls: the CLI makes their flags, and [`Mesh::upstream_channel`] finds
    /// them in the mesh's table.
    const UPSTREAMS: &'static [Upstream] = &[];

    /// The events it publishes and consumes: with any, it needs a broker ([`Mesh::broker`]).
    const EVENTS: Events = Events::NONE;

    /// Registers the help texts of the metrics the service records itself (the runtime's are
    /// registered with the metrics exporter), so every series it exports has its HELP line.
    fn describe_metrics() {}

    /// Its routes over its (soon migrated) `pool`, with the work that runs beside them.
    fn start(
        mesh: &Mesh,
        config: &Self::Config,
        pool: Pool,
    ) -> impl Future<Output = Result<Started, Error>> + Send;
}

/// A started service: what it serves, and what runs beside it for as long as it serves.
pub struct Started {
    /// The service's routes (health and reflection are added by the server).
    pub routes: Routes,
    /// Tasks that run while it serves and are stopped with it (the order reconciler).
    pub beside: Vec<BoxFuture<'static, ()>>,
}

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Started").field("beside", &self.beside.len()).finish_non_exhaustive()
    }
}

impl Started {
    /// Routes with nothing beside them.
    pub fn routes(routes: Routes) -> Self {
        Self { routes, beside: Vec::new() }
    }
}

/// The listeners a service serves on, bound by the caller (so a port in use fails the start,
/// and tests can bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// The service's own port.
    pub service: TcpListener,
    /// A plaintext port serving only `grpc.health.v1`, for kubelet probes when the service's
    /// own port requires mutual TLS.
    pub probe: Option<TcpListener>,
}

impl Listeners {
    /// The service's port alone.
    pub fn new(service: TcpListener) -> Self {
        Self { service, probe: None }
    }

    /// With a probe port beside it.
    #[must_use]
    pub fn with_probe(mut self, probe: TcpListener) -> Self {
        self.probe = Some(probe);
        self
    }
}

/// The mesh as one process joins it: its settings, its API, and the identity, token verifier
/// and policy loaded from them once. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
    /// Where the services this process calls are, and who they must be.
    upstreams: Arc<Upstreams>,
    /// Where events go, when this process has a broker.
    broker: Option<Broker>,
    /// The services of this process that its services call without a socket.
    local: Option<LocalServers>,
}

struct Inner {
    config: MeshConfig,
    api: Api,
    tls: Option<MeshTls>,
    verifier: Option<Arc<Verifier>>,
    policy: Option<Arc<Policy>>,
}

impl fmt::Debug for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("mtls", &self.inner.tls.is_some())
            .field("tokens", &self.inner.verifier.is_some())
            .field("authz", &self.inner.policy.is_some())
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Loads what `config` names (certificates, key set, policy) and checks it, so that a bad
    /// file stops the start instead of failing every call. Call it inside the Tokio runtime:
    /// certificates are watched for renewal on a task.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file or setting that is unusable.
    pub fn new(config: MeshConfig, api: Api) -> Result<Self, Error> {
        let verifier = Verifier::from_config(&config.jwt)?.map(Arc::new);
        let tls = MeshTls::load(&config.security)?;
        let policy = config
            .security
            .authz_policy
            .as_deref()
            .map(|path| Policy::load(path, &api.catalogue))
            .transpose()
            .map_err(|e| Error::Config(e.to_string()))?
            .map(Arc::new);
        if verifier.is_none() && policy.as_ref().is_some_and(|p| p.has_edges()) {
            return Err(Error::Config(
                "the authorization policy names edges (workloads acting for end users), whose calls \
                 must carry the user's bearer token, but bearer tokens are off: set --jwt-jwks, \
                 --jwt-issuer and --jwt-audience, or remove `edges` from the policy"
                    .into(),
            ));
        }
        Ok(Self {
            inner: Arc::new(Inner { config, api, tls, verifier, policy }),
            upstreams: Arc::new(Upstreams::new()),
            broker: None,
            local: None,
        })
    }

    /// This mesh with `upstreams` as its table of the services its services call.
    #[must_use]
    pub fn with_upstreams(mut self, upstreams: Upstreams) -> Self {
        self.upstreams = Arc::new(upstreams);
        self
    }

    /// This mesh with `broker` as where its services' events go.
    #[must_use]
    pub fn with_broker(mut self, broker: Broker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// This mesh with `local` as the services of this process: calls to them from its
    /// services go in-process ([`client::local`]), and each registers there when it serves.
    #[must_use]
    pub fn with_local_servers(mut self, local: LocalServers) -> Self {
        self.local = Some(local);
        self
    }

    /// The services of this process reached without a socket, when there are.
    pub fn local_servers(&self) -> Option<&LocalServers> {
        self.local.as_ref()
    }

    /// The broker of service `own`, which declares events.
    ///
    /// # Errors
    /// [`Error::Config`] saying what to set when this process has none.
    pub fn broker(&self, own: &str) -> Result<&Broker, Error> {
        self.broker.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "the {own} service publishes or consumes events and needs a NATS server with JetStream: \
                 set --events-url (SHOPMESH_EVENTS_URL), e.g. nats://127.0.0.1:4222"
            ))
        })
    }

    /// The table of the services this process's services call.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// The mesh-wide settings.
    pub fn config(&self) -> &MeshConfig {
        &self.inner.config
    }

    /// The API served and called.
    pub fn api(&self) -> Api {
        self.inner.api
    }

    /// This process's mesh identity, when mutual TLS is on.
    pub fn tls(&self) -> Option<&MeshTls> {
        self.inner.tls.as_ref()
    }

    /// The bearer-token verifier, when tokens are on.
    pub fn verifier(&self) -> Option<&Arc<Verifier>> {
        self.inner.verifier.as_ref()
    }

    /// The authorization policy, when one is configured.
    pub fn policy(&self) -> Option<&Arc<Policy>> {
        self.inner.policy.as_ref()
    }

    /// Whether any authentication is configured: mutual TLS or bearer tokens. Then a caller
    /// without a mesh identity does not steer this service's traces.
    pub fn authenticates(&self) -> bool {
        self.inner.tls.is_some() || self.inner.verifier.is_some()
    }

    /// Whether every call must prove who makes it: mutual TLS, or bearer tokens required of
    /// every caller without a mesh identity. Otherwise anyone who reaches the port may call.
    pub fn authenticates_every_call(&self) -> bool {
        self.inner.tls.is_some()
            || (self.inner.verifier.is_some()
                && self.inner.config.jwt.jwt_require == TokenRequirement::Unidentified)
    }

    /// A channel to `target` through the mesh's client stack, over mutual TLS when it is on,
    /// accepting any server of the mesh's CA and trust domain (see [`client::channel`]). A
    /// service calling another uses [`Mesh::upstream_channel`], which pins the server's identity.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed target or out-of-range retry settings.
    pub async fn channel(&self, target: &str) -> Result<Channel, Error> {
        client::channel(target, &self.inner.config.client, self.inner.api.catalogue, self.tls()).await
    }

    /// A channel from this process's service `own` to its `upstream`, at the addresses the
    /// mesh's table gives. Over mutual TLS only a server presenting the table's expected ID is
    /// accepted; without one, the ID of the upstream beside this process's own
    /// ([`SpiffeId::sibling`]: `<release>-<own>` calls `<release>-<name>`, the chart's and
    /// `dev-certs`' naming). When `upstream` is a service of this process
    /// ([`Mesh::with_local_servers`]) that presents this identity, calls go to it in-process,
    /// presenting this process's identity as its certificate would.
    ///
    /// # Errors
    /// [`Error::Config`] for an upstream missing from the table, a malformed target, an expected
    /// ID that is not a SPIFFE ID of the trust domain, or an own identity the default cannot be
    /// derived from.
    pub async fn upstream_channel(&self, own: &str, upstream: &Upstream) -> Result<Channel, Error> {
        let name = upstream.name;
        let target = self.upstreams.get(name).ok_or_else(|| {
            Error::Config(format!(
                "the {own} service calls {name}, but the mesh's upstream table has no {name}"
            ))
        })?;
        let config = &self.inner.config.client;
        let Some(tls) = self.tls() else {
            if self.verifier().is_some() {
                // Tokens are end users' credentials: without mTLS a service has none of its own,
                // and its calls would be refused (or, with tokens optional, served as nobody's).
                return Err(Error::Config(format!(
                    "the {own} service calls {name}, and with bearer tokens on, calls between services \
                     need mutual TLS to prove which service makes them: set --tls-cert, --tls-key and \
                     --tls-ca (the chart's tls.enabled=true), or turn tokens off"
                )));
            }
            if let Some(local) = self.local.as_ref().and_then(|l| l.call(Some(own), name, None)) {
                tracing::info!(upstream = name, grpc_service = upstream.grpc_service, "calls go in-process");
                return client::local_channel(local, config, self.inner.api.catalogue);
            }
            return client::channel(&target.url, config, self.inner.api.catalogue, None).await;
        };
        let flag = upstream.spiffe_id_flag();
        let server = match target.expected.as_deref() {
            Some(id) => {
                let id = SpiffeId::parse(id).map_err(|e| Error::Config(format!("{flag} {id:?}: {e}")))?;
                if id.trust_domain() != tls.trust_domain() {
                    return Err(Error::Config(format!(
                        "{flag} {id} is outside trust domain {}",
                        tls.trust_domain()
                    )));
                }
                id
            }
            None => {
                let own_id = tls.identity();
                own_id.sibling(own, name).ok_or_else(|| {
                    Error::Config(format!(
                        "cannot derive the {name} service's SPIFFE ID from this service's own, {own_id} \
                         (its service account does not end in -{own}): set {flag}"
                    ))
                })?
            }
        };
        let own_id = tls.identity();
        // In-process only where the callee would present the identity required of it (this
        // process's); otherwise the network path fails the call as it would.
        if server == own_id
            && let Some(local) =
                self.local.as_ref().and_then(|l| l.call(Some(own), name, Some(PeerIdentity(own_id))))
        {
            tracing::info!(upstream = name, grpc_service = upstream.grpc_service, "calls go in-process");
            return client::local_channel(local, config, self.inner.api.catalogue);
        }
        tracing::info!(upstream = name, grpc_service = upstream.grpc_service, server = %server, "calls accept only this server identity");
        client::pinned_channel(&target.url, config, self.inner.api.catalogue, tls, server).await
    }
}
