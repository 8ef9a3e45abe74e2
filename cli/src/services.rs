//! The binary's service list: one line per service. A new service is its crate (a library
//! implementing [`MeshService`]) and one line here; everything else (its `serve` and `migrate`
//! subcommands, its flags in the all-in-one run, its upstreams' flags, its place in the
//! start order) follows from the line.

use shopmesh::mesh::config::MeshConfig;
use shopmesh::mesh::service::MeshService;
use shopmesh::mesh::upstream::{Declared, Upstream, UpstreamArgs};

use crate::all_in_one::Launch;

/// Makes, from the list: [`Service`] (a subcommand per service, for `serve` and `migrate`),
/// [`AllArgs`] (the all-in-one run's flags: the mesh's, each service's, every upstream's) and
/// [`Every`] (the upstreams of every service).
macro_rules! services {
    ($($(#[$doc:meta])* $field:ident => $variant:ident($service:ty),)+) => {
        /// One service, as `serve` and `migrate` take it.
        #[derive(Debug, clap::Subcommand)]
        pub enum Service {
            $($(#[$doc])* $variant(One<$service>),)+
        }

        impl Service {
            /// Runs `job` with the service's type and its settings.
            pub fn with<J: Job>(self, job: J) -> J::Output {
                match self {
                    $(Service::$variant(one) => job.run::<$service>(one),)+
                }
            }
        }

        /// Settings of the all-in-one run: the mesh's, then each service's own, then where
        /// every upstream is (the local services override them).
        #[derive(Debug, clap::Args)]
        pub struct AllArgs {
            #[command(flatten)]
            pub mesh: MeshConfig,
            $(
                #[command(flatten)]
                pub $field: <$service as MeshService>::Config,
            )+
            #[command(flatten)]
            pub upstreams: UpstreamArgs<Every>,
            #[command(flatten)]
            pub in_process: crate::all_in_one::InProcess,
        }

        impl AllArgs {
            /// Every service with its settings, in the list's order.
            pub fn launches(self) -> (MeshConfig, UpstreamArgs<Every>, Vec<Launch>) {
                (self.mesh, self.upstreams, vec![$(Launch::of::<$service>(self.$field),)+])
            }
        }

        /// The short names of the services, in the list's order.
        pub const NAMES: &[&str] = &[$(<$service as MeshService>::NAME,)+];

        /// The upstreams of every service of the list, each once.
        #[derive(Debug)]
        pub struct Every;

        impl Declared for Every {
            fn upstreams() -> Vec<Upstream> {
                let mut all: Vec<Upstream> = Vec::new();
                for upstream in [$(<$service as MeshService>::UPSTREAMS,)+].into_iter().flatten() {
                    if !all.iter().any(|u| u.name == upstream.name) {
                        all.push(*upstream);
                    }
                }
                all
            }
        }
    };
}

services! {
    /// The user service (accounts).
    user => User(shopmesh_user::User),
    /// The payment service (charges and refunds over a simulated processor).
    payment => Payment(shopmesh_payment::Payment),
    /// The catalog service (products and their prices).
    catalog => Catalog(shopmesh_catalog::Catalog),
    /// The order service (orders; calls user, catalog and payment; publishes order events).
    order => Order(shopmesh_order::Order),
    /// The inventory service (stock of the catalog's SKUs; allocates paid orders from the order
    /// events).
    inventory => Inventory(shopmesh_inventory::Inventory),
    /// The notification service (messages to users from the inventory and order events).
    notification => Notification(shopmesh_notification::Notification),
}

/// One service with the mesh's settings, its own, and where its upstreams are.
#[derive(Debug, clap::Args)]
pub struct One<S: MeshService> {
    #[command(flatten)]
    pub mesh: MeshConfig,
    #[command(flatten)]
    pub config: S::Config,
    #[command(flatten)]
    pub upstreams: UpstreamArgs<S>,
}

/// Something done with one service whatever its type (`serve`, `migrate`).
pub trait Job {
    /// What it gives.
    type Output;
    /// Does it with service `S`.
    fn run<S: MeshService>(self, one: One<S>) -> Self::Output;
}
