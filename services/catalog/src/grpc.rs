//! The generated `CatalogService` trait's implementation: proto in, domain and store, proto out.

use shopmesh::api::catalog::v1::{
    BatchGetProductsRequest, BatchGetProductsResponse, CreateProductRequest, GetProductRequest,
    ListProductsRequest, ListProductsResponse, Product as ProductProto, UpdateProductRequest,
    catalog_service_server::CatalogService,
};
use shopmesh::api::common::v1::Money;
use shopmesh::mesh::identity::Principal;
use shopmesh::mesh::ids;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::domain::{self, Product};
use crate::error::Error;
use crate::store::{Store, Updated};

/// The catalog service's gRPC API over its store.
#[derive(Debug, Clone)]
pub struct CatalogApi {
    store: Store,
}

impl CatalogApi {
    /// The API over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn to_proto(p: Product) -> ProductProto {
    let etag = p.etag();
    ProductProto {
        sku: p.sku.to_string(),
        display_name: p.display_name,
        unit_price: Some(Money {
            currency_code: p.unit_price.currency_code,
            amount_minor: p.unit_price.amount_minor,
        }),
        active: p.active,
        create_time: Some(ids::timestamp(p.create_time_ms)),
        update_time: Some(ids::timestamp(p.update_time_ms)),
        etag,
    }
}

/// Refuses changes from anyone but the mesh's own workloads: an end user (a shop's customer,
/// with a bearer token) gets PERMISSION_DENIED, a caller that proved nothing UNAUTHENTICATED.
/// The catalog is read by anyone but managed by the mesh's own services and tools.
fn mesh_only<T>(req: &Request<T>) -> Result<(), Error> {
    match Principal::of_call(req).scope()? {
        None => Ok(()),
        Some(_) => {
            Err(Error::PermissionDenied("the catalog is changed by the mesh, not bearer-token callers"))
        }
    }
}

#[tonic::async_trait]
impl CatalogService for CatalogApi {
    async fn create_product(
        &self,
        req: Request<CreateProductRequest>,
    ) -> Result<Response<ProductProto>, Status> {
        mesh_only(&req)?;
        let new = convert::create_product(req.get_ref())?;
        let sku = new.sku.clone();
        match self.store.create(new).await.map_err(Error::from)? {
            Some(product) => Ok(Response::new(to_proto(product))),
            None => Err(Error::SkuTaken(sku).into()),
        }
    }

    async fn get_product(&self, req: Request<GetProductRequest>) -> Result<Response<ProductProto>, Status> {
        let sku = convert::get_product(req.get_ref())?;
        match self.store.get(&sku).await.map_err(Error::from)? {
            Some(product) => Ok(Response::new(to_proto(product))),
            None => Err(Error::NotFound(vec![sku]).into()),
        }
    }

    async fn list_products(
        &self,
        req: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        let query = convert::list_products(req.get_ref())?;
        let size = query.size;
        // One extra row tells whether another page follows without a second query.
        let mut products =
            self.store.list(query.after.as_ref(), query.filter, size + 1).await.map_err(Error::from)?;
        let next_page_token = if products.len() > size as usize {
            products.truncate(size as usize);
            products.last().map(|p| query.next_token(&p.sku)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListProductsResponse {
            products: products.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn update_product(
        &self,
        req: Request<UpdateProductRequest>,
    ) -> Result<Response<ProductProto>, Status> {
        mesh_only(&req)?;
        let update = convert::update_product(req.get_ref())?;
        match self.store.update(&update).await.map_err(Error::from)? {
            Updated::Changed(product) => Ok(Response::new(to_proto(product))),
            Updated::NotFound => Err(Error::NotFound(vec![update.sku]).into()),
            Updated::Stale => {
                let etag = req.get_ref().product.as_ref().map(|p| p.etag.clone()).unwrap_or_default();
                Err(Error::EtagMismatch { sku: update.sku, etag }.into())
            }
        }
    }

    async fn batch_get_products(
        &self,
        req: Request<BatchGetProductsRequest>,
    ) -> Result<Response<BatchGetProductsResponse>, Status> {
        let requested = convert::batch_get_products(req.get_ref())?;
        let mut distinct = requested.clone();
        distinct.sort();
        distinct.dedup();
        let found = self.store.get_many(&distinct).await.map_err(Error::from)?;
        match domain::in_request_order(&requested, found) {
            Ok(products) => Ok(Response::new(BatchGetProductsResponse {
                products: products.into_iter().map(to_proto).collect(),
            })),
            Err(missing) => Err(Error::NotFound(missing).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_mesh_changes_the_catalog() {
        let as_principal = |principal: Principal| {
            let mut request = Request::new(());
            request.extensions_mut().insert(principal);
            mesh_only(&request).map_err(|e| Status::from(e).code())
        };
        assert_eq!(as_principal(Principal::Mesh), Ok(()), "a workload of the mesh");
        assert_eq!(as_principal(Principal::User("customer-1".into())), Err(tonic::Code::PermissionDenied));
        assert_eq!(
            as_principal(Principal::Anonymous),
            Err(tonic::Code::Unauthenticated),
            "no token and no mesh identity is nobody, never the mesh"
        );
        let unmarked = mesh_only(&Request::new(())).map_err(|e| Status::from(e).code());
        assert_eq!(unmarked, Err(tonic::Code::Unauthenticated), "a call no layer vouched for");
    }
}
