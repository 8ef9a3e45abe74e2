//! UserService: the first byte picks the request message, the rest is its protobuf encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shopmesh::api::user::v1::{CreateUserRequest, GetUserRequest, ListUsersRequest, UpdateUserRequest};
use shopmesh_fuzz::check;
use shopmesh_user::convert;

fuzz_target!(|data: &[u8]| {
    let Some((&method, body)) = data.split_first() else { return };
    match method % 4 {
        0 => check::<CreateUserRequest, _>(body, convert::create_user),
        1 => check::<GetUserRequest, _>(body, convert::get_user),
        2 => check::<ListUsersRequest, _>(body, convert::list_users),
        _ => check::<UpdateUserRequest, _>(body, convert::update_user),
    }
});
