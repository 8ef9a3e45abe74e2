//! The generated `InventoryService` trait's implementation: proto in, store, proto out.

use shopmesh::api::inventory::v1::{
    GetStockRequest, ListStockRequest, ListStockResponse, SetStockRequest, Stock as StockProto,
    inventory_service_server::InventoryService,
};
use shopmesh::mesh::identity::Principal;
use shopmesh::mesh::ids;
use tonic::{Request, Response, Status};

use crate::catalog::Catalog;
use crate::convert;
use crate::domain::Stock;
use crate::error::Error;
use crate::store::Store;

/// The inventory service's gRPC API.
#[derive(Debug, Clone)]
pub struct InventoryApi {
    store: Store,
    catalog: Catalog,
}

impl InventoryApi {
    /// The API over `store`, checking SKUs against `catalog`.
    pub fn new(store: Store, catalog: Catalog) -> Self {
        Self { store, catalog }
    }
}

fn to_proto(s: Stock) -> StockProto {
    StockProto {
        sku: s.sku,
        on_hand: s.on_hand,
        allocated: s.allocated,
        update_time: Some(ids::timestamp(s.update_time_ms)),
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    async fn set_stock(&self, req: Request<SetStockRequest>) -> Result<Response<StockProto>, Status> {
        // Stock is the mesh's administrators' to set, not an end user's.
        if Principal::of_call(&req).scope().map_err(Error::from)?.is_some() {
            return Err(Error::PermissionDenied.into());
        }
        let (sku, on_hand) = convert::set_stock(req.get_ref())?;
        if !self.catalog.has(&sku).await.map_err(Error::Catalog)? {
            return Err(Error::UnknownProduct(sku).into());
        }
        Ok(Response::new(to_proto(self.store.set(&sku, on_hand).await.map_err(Error::from)?)))
    }

    async fn get_stock(&self, req: Request<GetStockRequest>) -> Result<Response<StockProto>, Status> {
        let sku = convert::get_stock(req.get_ref())?;
        match self.store.get(&sku).await.map_err(Error::from)? {
            Some(stock) => Ok(Response::new(to_proto(stock))),
            None => Err(Error::NotFound(sku).into()),
        }
    }

    async fn list_stock(
        &self,
        req: Request<ListStockRequest>,
    ) -> Result<Response<ListStockResponse>, Status> {
        let (size, after) = convert::list_stock(req.get_ref())?;
        let mut rows =
            self.store.list(after.as_deref(), size.saturating_add(1)).await.map_err(Error::from)?;
        let next_page_token = if rows.len() > size as usize {
            rows.truncate(size as usize);
            rows.last().map(|s| s.sku.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListStockResponse {
            stock: rows.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }
}
