//! Proto → domain for every `UserService` request: the validation the handlers run before any
//! database work, as plain functions so fuzz targets and property tests run exactly this code.
//!
//! Each function answers a valid request with what the handler works on, and anything else
//! with INVALID_ARGUMENT listing every bad field as a `google.rpc.BadRequest` violation.

use shopmesh::api::user::v1::{CreateUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest};
use shopmesh::mesh::validation::{self, Page, Violations};
use tonic::Status;

use crate::domain::{NewUser, UserPatch};
use crate::error::Error;

fn invalid(v: Violations) -> Status {
    Error::from(v).into()
}

/// The user a CreateUser asks for.
pub fn create_user(req: &CreateUserRequest) -> Result<NewUser, Status> {
    NewUser::parse(&req.email, &req.display_name, &req.request_id).map_err(invalid)
}

/// The id a GetUser names.
pub fn get_user(req: &GetUserRequest) -> Result<String, Status> {
    let mut v = Violations::new();
    validation::id(&mut v, "id", &req.id);
    v.check(req.id.clone()).map_err(invalid)
}

/// The page a ListUsers asks for.
pub fn list_users(req: &ListUsersRequest) -> Result<Page, Status> {
    let mut v = Violations::new();
    let page = validation::page(&mut v, req.page_size, &req.page_token);
    v.check(page).map_err(invalid)
}

/// The user an UpdateUser names and the change it asks for.
pub fn update_user(req: &UpdateUserRequest) -> Result<(String, UserPatch), Status> {
    let paths = req.update_mask.as_ref().map(|m| m.paths.as_slice()).unwrap_or_default();
    match &req.user {
        Some(u) => UserPatch::parse(&u.id, paths, &u.display_name, u.active),
        None => {
            let mut v = Violations::new();
            v.add("user", "is required");
            Err(v)
        }
    }
    .map_err(invalid)
}

