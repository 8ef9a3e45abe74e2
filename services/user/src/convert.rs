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

#[cfg(test)]
mod tests {
    //! Property tests: arbitrary requests and arbitrary bytes are either converted or rejected
    //! with INVALID_ARGUMENT and field violations, never a panic; valid requests convert.

    use super::*;
    use proptest::prelude::*;
    use prost::Message as _;
    use prost_types::{FieldMask, Timestamp};
    use shopmesh::api::user::v1::User;
    use shopmesh::mesh::hostile::{self, int32, or_text, text, valid_id, valid_request_id};

    fn check<T>(outcome: &Result<T, Status>) -> Result<(), TestCaseError> {
        match hostile::unacceptable(outcome) {
            None => Ok(()),
            Some(finding) => Err(TestCaseError::fail(finding)),
        }
    }

    fn valid_email() -> BoxedStrategy<String> {
        "[a-zA-Z0-9._%+-]{1,64}@[a-z0-9-]{1,40}\\.[a-z]{2,10}".boxed()
    }

    /// 1 to 100 characters, none a control character, not blank at either end.
    fn valid_display_name() -> BoxedStrategy<String> {
        "[^\\p{Cc}\\s]([^\\p{Cc}]{0,98}[^\\p{Cc}\\s])?".boxed()
    }

    fn create_user_request() -> impl Strategy<Value = CreateUserRequest> {
        (or_text(valid_email()), or_text(valid_display_name()), or_text(valid_request_id())).prop_map(
            |(email, display_name, request_id)| CreateUserRequest { email, display_name, request_id },
        )
    }

    fn mask_path() -> BoxedStrategy<String> {
        prop_oneof![
            3 => prop_oneof![
                Just("display_name"), Just("active"), Just("*"), Just("id"), Just("email"),
                Just("create_time"), Just("update_time"),
            ]
            .prop_map(str::to_owned),
            1 => text(),
        ]
        .boxed()
    }

    fn update_user_request() -> impl Strategy<Value = UpdateUserRequest> {
        let timestamp =
            (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos });
        let user = (
            or_text(valid_id()),
            text(),
            or_text(valid_display_name()),
            any::<bool>(),
            proptest::option::of(timestamp.clone()),
            proptest::option::of(timestamp),
        )
            .prop_map(|(id, email, display_name, active, create_time, update_time)| User {
                id,
                email,
                display_name,
                active,
                create_time,
                update_time,
            });
        let mask = prop_oneof![
            proptest::collection::vec(mask_path(), 0..4),
            // Oversized: far more paths than fields, as a hostile client would send.
            proptest::collection::vec(mask_path(), 0..2000),
        ]
        .prop_map(|paths| FieldMask { paths });
        (proptest::option::of(user), proptest::option::of(mask))
            .prop_map(|(user, update_mask)| UpdateUserRequest { user, update_mask })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_create_user(req in create_user_request()) {
            check(&create_user(&req))?;
        }

        #[test]
        fn arbitrary_get_user(id in or_text(valid_id())) {
            check(&get_user(&GetUserRequest { id }))?;
        }

        #[test]
        fn arbitrary_list_users(page_size in int32(), page_token in or_text(valid_id())) {
            check(&list_users(&ListUsersRequest { page_size, page_token }))?;
        }

        #[test]
        fn arbitrary_update_user(req in update_user_request()) {
            check(&update_user(&req))?;
        }

        #[test]
        fn arbitrary_bytes(
            create in hostile::bytes(create_user_request().prop_map(|m| m.encode_to_vec())),
            update in hostile::bytes(update_user_request().prop_map(|m| m.encode_to_vec())),
            other in hostile::bytes(Just(Vec::new())),
        ) {
            if let Ok(req) = CreateUserRequest::decode(create.as_slice()) {
                check(&create_user(&req))?;
            }
            if let Ok(req) = UpdateUserRequest::decode(update.as_slice()) {
                check(&update_user(&req))?;
            }
            if let Ok(req) = GetUserRequest::decode(other.as_slice()) {
                check(&get_user(&req))?;
            }
            if let Ok(req) = ListUsersRequest::decode(other.as_slice()) {
                check(&list_users(&req))?;
            }
        }

        #[test]
        fn valid_requests_convert(
            email in valid_email(),
            display_name in valid_display_name(),
            request_id in proptest::option::of(valid_request_id()),
            id in valid_id(),
            page_size in 0..=i32::MAX,
            token in proptest::option::of(valid_id()),
            active in any::<bool>(),
        ) {
            let req = CreateUserRequest {
                email: email.clone(),
                display_name: display_name.clone(),
                request_id: request_id.clone().unwrap_or_default(),
            };
            let new = create_user(&req).map_err(|s| TestCaseError::fail(format!("{req:?}: {s:?}")))?;
            prop_assert_eq!(new.email, email.to_lowercase());
            prop_assert_eq!(new.display_name, display_name.clone());
            prop_assert_eq!(new.request_id, request_id);

            prop_assert_eq!(get_user(&GetUserRequest { id: id.clone() }).ok(), Some(id.clone()));

            let page = list_users(&ListUsersRequest {
                page_size,
                page_token: token.clone().unwrap_or_default(),
            })
            .map_err(|s| TestCaseError::fail(format!("{s:?}")))?;
            prop_assert!((1..=1000).contains(&page.size));
            prop_assert_eq!(page.after, token);

            let user = User { id: id.clone(), display_name: display_name.clone(), active, ..User::default() };
            let req = UpdateUserRequest {
                user: Some(user),
                update_mask: Some(FieldMask { paths: vec!["display_name".into(), "active".into()] }),
            };
            let (to, patch) = update_user(&req).map_err(|s| TestCaseError::fail(format!("{req:?}: {s:?}")))?;
            prop_assert_eq!(to, id);
            prop_assert_eq!(patch, UserPatch { display_name: Some(display_name), active: Some(active) });
        }
    }
}
