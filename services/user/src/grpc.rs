//! The generated `UserService` trait's implementation: proto in, domain and store, proto out.

use shopmesh::api::user::v1::{
    CreateUserRequest, GetUserRequest, ListUsersRequest, ListUsersResponse, UpdateUserRequest,
    User as UserProto, user_service_server::UserService,
};
use shopmesh::mesh::identity::Principal;
use shopmesh::mesh::ids;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::domain::User;
use crate::error::Error;
use crate::store::{Created, Store};

/// The user service's gRPC API over its store.
#[derive(Debug, Clone)]
pub struct UserApi {
    store: Store,
}

impl UserApi {
    /// The API over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn to_proto(u: User) -> UserProto {
    UserProto {
        id: u.id,
        email: u.email,
        display_name: u.display_name,
        active: u.active,
        create_time: Some(ids::timestamp(u.create_time_ms)),
        update_time: Some(ids::timestamp(u.update_time_ms)),
    }
}

/// Refuses a call that is not the mesh's own: an end user's (`denied`), or nobody's.
fn mesh_only<T>(req: &Request<T>, denied: &'static str) -> Result<(), Error> {
    match Principal::of_call(req).scope()? {
        None => Ok(()),
        Some(_) => Err(Error::PermissionDenied(denied)),
    }
}

/// Denies an end user access to any user but its own, before anything is looked up.
fn own_user(scope: Option<&str>, id: &str) -> Result<(), Error> {
    match scope {
        Some(sub) if sub != id => Err(Error::PermissionDenied("a caller may access only its own user")),
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn create_user(&self, req: Request<CreateUserRequest>) -> Result<Response<UserProto>, Status> {
        // The server picks the new user's id, so no token can name it: accounts are created by
        // the mesh (a sign-up flow), not by end users' tokens.
        mesh_only(&req, "users are not created with a bearer token")?;
        let new = convert::create_user(req.get_ref())?;
        let user = match self.store.create(&new).await.map_err(Error::from)? {
            Created::Inserted(user) => user,
            Created::SameRequest(user) if new.matches(&user) => user,
            Created::SameRequest(_) => {
                return Err(Error::RequestIdReused(new.request_id.unwrap_or_default()).into());
            }
            Created::EmailTaken => return Err(Error::EmailTaken(new.email).into()),
        };
        Ok(Response::new(to_proto(user)))
    }

    async fn get_user(&self, req: Request<GetUserRequest>) -> Result<Response<UserProto>, Status> {
        own_user(Principal::of_call(&req).scope().map_err(Error::from)?, &req.get_ref().id)?;
        let id = convert::get_user(req.get_ref())?;
        match self.store.get(&id).await.map_err(Error::from)? {
            Some(user) => Ok(Response::new(to_proto(user))),
            None => Err(Error::NotFound(id).into()),
        }
    }

    async fn list_users(
        &self,
        req: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        mesh_only(&req, "listing users is not open to bearer-token callers")?;
        let page = convert::list_users(req.get_ref())?;
        let users = self.store.list(page.after.as_deref(), page.fetch()).await.map_err(Error::from)?;
        let users = page.split(users, |u| &u.id);
        Ok(Response::new(ListUsersResponse {
            users: users.items.into_iter().map(to_proto).collect(),
            next_page_token: users.next_page_token,
        }))
    }

    async fn update_user(&self, req: Request<UpdateUserRequest>) -> Result<Response<UserProto>, Status> {
        let scope = Principal::of_call(&req).scope().map_err(Error::from)?;
        own_user(scope, req.get_ref().user.as_ref().map_or("", |u| u.id.as_str()))?;
        let (id, patch) = convert::update_user(req.get_ref())?;
        if scope.is_some() && patch.active.is_some() {
            // Deactivation is how operators stop an account ordering; its owner cannot undo it.
            return Err(Error::PermissionDenied("a caller may not change its own active state").into());
        }
        match self.store.update(&id, &patch).await.map_err(Error::from)? {
            Some(user) => Ok(Response::new(to_proto(user))),
            None => Err(Error::NotFound(id).into()),
        }
    }
}
