//! Proto → domain for every `NotificationService` request: the validation the handlers run
//! before any database work, answering anything invalid with INVALID_ARGUMENT and a
//! `google.rpc.BadRequest` violation per bad field.

use shopmesh::api::notification::v1::{GetNotificationRequest, ListNotificationsRequest};
use shopmesh::mesh::validation::{self, Page, Violations};
use tonic::Status;

use crate::domain::Filter;
use crate::error::Error;

fn invalid(v: Violations) -> Status {
    Error::from(v).into()
}

/// Whose notifications a ListNotifications asks for, and the page.
pub fn list_notifications(req: &ListNotificationsRequest) -> Result<(Filter, Page), Status> {
    let mut v = Violations::new();
    let filter = match (req.user_id.is_empty(), req.order_id.is_empty()) {
        (false, true) => {
            validation::id(&mut v, "user_id", &req.user_id);
            Some(Filter::User(req.user_id.clone()))
        }
        (true, false) => {
            validation::id(&mut v, "order_id", &req.order_id);
            Some(Filter::Order(req.order_id.clone()))
        }
        _ => {
            v.add("user_id", "exactly one of user_id and order_id is required");
            None
        }
    };
    let page = validation::page(&mut v, req.page_size, &req.page_token);
    v.check(()).map_err(invalid)?;
    filter.map(|f| (f, page)).ok_or_else(|| invalid(Violations::new()))
}

/// The id a GetNotification names.
pub fn get_notification(req: &GetNotificationRequest) -> Result<String, Status> {
    let mut v = Violations::new();
    validation::id(&mut v, "id", &req.id);
    v.check(req.id.clone()).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_names_exactly_one_of_user_and_order() {
        let id = shopmesh::mesh::ids::new_id();
        let both =
            ListNotificationsRequest { user_id: id.clone(), order_id: id.clone(), ..Default::default() };
        let err = list_notifications(&both).expect_err("both");
        assert_eq!(shopmesh::mesh::testing::field_violations(&err), ["user_id"]);
        assert!(list_notifications(&ListNotificationsRequest::default()).is_err(), "neither");
        let (filter, _) =
            list_notifications(&ListNotificationsRequest { order_id: id.clone(), ..Default::default() })
                .expect("valid");
        assert_eq!(filter, Filter::Order(id));
        let err = get_notification(&GetNotificationRequest { id: "x".into() }).expect_err("bad id");
        assert_eq!(shopmesh::mesh::testing::field_violations(&err), ["id"]);
    }
}
