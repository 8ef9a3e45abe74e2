//! The inventory's one call to another service: whether the catalog has a SKU, asked before
//! SetStock records stock of it (stock is of products the catalog sells). Declared as data
//! ([`UPSTREAMS`]) so the binary makes `--catalog-url` and the mesh finds the channel.

use shopmesh::api::catalog::v1::{GetProductRequest, catalog_service_client::CatalogServiceClient};
use shopmesh::mesh::client::Channel;
use shopmesh::mesh::upstream::Upstream;
use tonic::{Code, Status};

/// The catalog service, which says which SKUs exist.
pub const CATALOG: Upstream = Upstream {
    name: "catalog",
    grpc_service: shopmesh::api::catalog::v1::catalog_service_server::SERVICE_NAME,
    default_url: "http://127.0.0.1:50054",
    role: "says which SKUs stock may be set for",
};

/// The services the inventory service calls.
pub const UPSTREAMS: &[Upstream] = &[CATALOG];

/// A client of the catalog over the mesh's client stack (deadline, retries, mTLS identity).
#[derive(Debug, Clone)]
pub struct Catalog {
    client: CatalogServiceClient<Channel>,
}

impl Catalog {
    /// The catalog behind `channel`.
    pub fn new(channel: Channel) -> Self {
        Self { client: CatalogServiceClient::new(channel) }
    }

    /// Whether the catalog has a product `sku` (active or not: stock of a product withdrawn
    /// from sale may still be counted). Any other answer than the product or NOT_FOUND is the
    /// catalog's failure, returned as it came.
    pub async fn has(&self, sku: &str) -> Result<bool, Status> {
        match self.client.clone().get_product(GetProductRequest { sku: sku.to_owned() }).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(status),
        }
    }
}
