//! The services a service calls, as data: each service declares its upstreams
//! ([`MeshService::UPSTREAMS`]: name, the gRPC service it calls, where it is by default), the
//! [`Mesh`](crate::mesh::service::Mesh) holds the table name -> [`Target`] (addresses, and the
//! identity the server must present) that a binary fills, and [`UpstreamArgs`] makes every
//! declared upstream's flags: `--<name>-url` (`SHOPMESH_<NAME>_URL`) and `--<name>-spiffe-id`
//! (`SHOPMESH_<NAME>_SPIFFE_ID`), the names the Helm chart and the compose file set. So a new
//! upstream is one line where its caller declares it.
//!
//! [`MeshService::UPSTREAMS`]: crate::mesh::service::MeshService::UPSTREAMS

use std::collections::BTreeMap;
use std::marker::PhantomData;

use clap::{Arg, ArgMatches, Command};

use crate::mesh::config::CALLS;
use crate::mesh::service::MeshService;

/// A service another calls, as its caller declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    /// The callee's short name (its [`MeshService::NAME`]): its key in the mesh's table and in
    /// its flags.
    pub name: &'static str,
    /// The gRPC service called there.
    pub grpc_service: &'static str,
    /// Where it is when nothing says otherwise: the callee's default address on this host.
    pub default_url: &'static str,
    /// What its caller needs it for, said in `--help` ("prices every order").
    pub role: &'static str,
}

impl Upstream {
    /// The flag of its addresses: `--<name>-url`.
    pub fn url_flag(&self) -> String {
        format!("--{}-url", self.name)
    }

    /// The flag of the identity it must present: `--<name>-spiffe-id`.
    pub fn spiffe_id_flag(&self) -> String {
        format!("--{}-spiffe-id", self.name)
    }

    fn env(&self, what: &str) -> String {
        format!("SHOPMESH_{}_{what}", self.name.to_uppercase().replace('-', "_"))
    }
}

/// Where one upstream is, and who it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http://host:port`, or several comma-separated (see
    /// [`client::channel`](crate::mesh::client::channel)).
    pub url: String,
    /// The SPIFFE ID the server must present over mutual TLS; `None`: the caller's own ID with
    /// the callee's name ([`SpiffeId::sibling`](crate::mesh::identity::SpiffeId::sibling)).
    pub expected: Option<String>,
}

/// The mesh's upstream table: name -> [`Target`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstreams(BTreeMap<String, Target>);

impl Upstreams {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `name` at `url` (its identity derived), for tests and examples.
    #[must_use]
    pub fn at(mut self, name: &str, url: impl Into<String>) -> Self {
        self.set(name, Target { url: url.into(), expected: None });
        self
    }

    /// Sets where `name` is and who it must be.
    pub fn set(&mut self, name: &str, target: Target) {
        self.0.insert(name.to_owned(), target);
    }

    /// Where `name` is, if the table says.
    pub fn get(&self, name: &str) -> Option<&Target> {
        self.0.get(name)
    }

    /// Points `name` at `url`, keeping the identity it must present.
    pub fn point_at(&mut self, name: &str, url: &str) {
        match self.0.get_mut(name) {
            Some(target) => url.clone_into(&mut target.url),
            None => self.set(name, Target { url: url.to_owned(), expected: None }),
        }
    }

    /// Requires `id` of every upstream that does not name its own (every service of one
    /// process presents the one certificate).
    pub fn expect_everywhere(&mut self, id: &str) {
        for target in self.0.values_mut() {
            target.expected.get_or_insert_with(|| id.to_owned());
        }
    }
}

/// A set of upstreams known when the binary is built, for [`UpstreamArgs`]: every service's
/// own, or a binary's union of several.
pub trait Declared {
    /// The upstreams, each name once.
    fn upstreams() -> Vec<Upstream>;
}

impl<S: MeshService> Declared for S {
    fn upstreams() -> Vec<Upstream> {
        S::UPSTREAMS.to_vec()
    }
}

/// The flags of `D`'s upstreams, parsed into the table the mesh takes
/// ([`Mesh::with_upstreams`](crate::mesh::service::Mesh::with_upstreams)).
#[derive(Debug, Clone)]
pub struct UpstreamArgs<D> {
    /// The table the flags filled.
    pub table: Upstreams,
    declared: PhantomData<fn() -> D>,
}

impl<D: Declared> clap::FromArgMatches for UpstreamArgs<D> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut table = Upstreams::new();
        for upstream in D::upstreams() {
            let url = matches.get_one::<String>(&upstream.url_flag()[2..]).cloned().unwrap_or_default();
            let expected = matches.get_one::<String>(&upstream.spiffe_id_flag()[2..]).cloned();
            table.set(upstream.name, Target { url, expected });
        }
        Ok(Self { table, declared: PhantomData })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl<D: Declared> clap::Args for UpstreamArgs<D> {
    fn augment_args(mut command: Command) -> Command {
        let upstreams = D::upstreams();
        // The long explanations once, on the first upstream; the others refer to it.
        let first = upstreams.first().copied();
        for upstream in &upstreams {
            let Upstream { name, grpc_service, default_url, role } = *upstream;
            let as_for = |flag: String| match first {
                Some(first) if first.name != name => Some(flag),
                _ => None,
            };
            let url_help = match as_for(first.map(|f| f.url_flag()).unwrap_or_default()) {
                Some(flag) => format!("The {name} service ({grpc_service}), which {role}, as for {flag}"),
                None => format!(
                    "The {name} service ({grpc_service}), which {role}: `http://host:port`, or several \
                     comma-separated. A DNS name is resolved to all its addresses (a Kubernetes headless \
                     Service) and re-resolved; calls are balanced over them. When all services run in one \
                     process, the local one is used, called in-process (--in-process-calls)"
                ),
            };
            let id_help = match as_for(first.map(|f| f.spiffe_id_flag()).unwrap_or_default()) {
                Some(flag) => format!(
                    "The SPIFFE ID the {name} service must present, as for {flag} (`<release>-{name}` by default)"
                ),
                None => format!(
                    "The SPIFFE ID the {name} service must present over mutual TLS. By default the caller's \
                     own with its service account's suffix (`-<caller>`) as `-{name}` (`<release>-{name}`, \
                     the chart's and `shopmesh dev-certs`' naming)"
                ),
            };
            let url = upstream.url_flag()[2..].to_owned();
            let id = upstream.spiffe_id_flag()[2..].to_owned();
            command = command
                .arg(
                    Arg::new(url.clone())
                        .long(url)
                        .env(upstream.env("URL"))
                        .value_name(format!("{}_URL", name.to_uppercase().replace('-', "_")))
                        .default_value(default_url)
                        .help_heading(CALLS)
                        .help(url_help),
                )
                .arg(
                    Arg::new(id.clone())
                        .long(id)
                        .env(upstream.env("SPIFFE_ID"))
                        .value_name("SPIFFE_ID")
                        .help_heading(CALLS)
                        .hide_short_help(true)
                        .help(id_help),
                );
        }
        command
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}
