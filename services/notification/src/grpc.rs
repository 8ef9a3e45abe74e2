//! The generated `NotificationService` trait's implementation: proto in, store, proto out.

use shopmesh::api::notification::v1::{
    GetNotificationRequest, ListNotificationsRequest, ListNotificationsResponse,
    Notification as NotificationProto, NotificationKind, notification_service_server::NotificationService,
};
use shopmesh::mesh::ids;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::domain::{Kind, Notification};
use crate::error::Error;
use crate::store::Store;

/// The notification service's gRPC API.
#[derive(Debug, Clone)]
pub struct NotificationApi {
    store: Store,
}

impl NotificationApi {
    /// The API over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn to_proto(n: Notification) -> NotificationProto {
    let kind = match n.kind {
        Kind::Confirmed => NotificationKind::Confirmed,
        Kind::Backordered => NotificationKind::Backordered,
        Kind::Cancelled => NotificationKind::Cancelled,
    };
    NotificationProto {
        id: n.id,
        user_id: n.user_id,
        order_id: n.order_id,
        kind: kind.into(),
        body: n.body,
        provider_message_id: n.provider_message_id,
        send_time: Some(ids::timestamp(n.send_time_ms)),
    }
}

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn list_notifications(
        &self,
        req: Request<ListNotificationsRequest>,
    ) -> Result<Response<ListNotificationsResponse>, Status> {
        let (filter, page) = convert::list_notifications(req.get_ref())?;
        let rows =
            self.store.list(&filter, page.after.as_deref(), page.fetch()).await.map_err(Error::from)?;
        let paged = page.split(rows, |n| &n.id);
        Ok(Response::new(ListNotificationsResponse {
            notifications: paged.items.into_iter().map(to_proto).collect(),
            next_page_token: paged.next_page_token,
        }))
    }

    async fn get_notification(
        &self,
        req: Request<GetNotificationRequest>,
    ) -> Result<Response<NotificationProto>, Status> {
        let id = convert::get_notification(req.get_ref())?;
        match self.store.get(&id).await.map_err(Error::from)? {
            Some(n) => Ok(Response::new(to_proto(n))),
            None => Err(Error::NotFound(id).into()),
        }
    }
}
