//! The shopmesh gRPC API, generated from `proto/` (one module per protobuf package, mirroring
//! `proto/shopmesh/<svc>/v1`): messages, clients (feature `client`) and servers (feature
//! `server`), the encoded descriptor set that server reflection serves, and the method
//! catalogue ([`CALL_POLICY`]: what each method's proto says about repeating it).
//!
//! It depends on prost, prost-types, tonic and tonic-prost only: a service that calls the mesh
//! needs nothing else. See `examples/create_order.rs` for a caller with a deadline and a
//! request id, and `docs/api-policy.md` for what may change within v1.

#![allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]

/// `tonic::include_proto!`, by the path `build.rs` gives: relative to this file when there is
/// one. The generated code's panic locations name the file they are in; by a relative name they
/// do not depend on where the checkout is, and so neither does the binary (its symbol names
/// included, which the release build's code layout goes by: `cli/build.rs`).
macro_rules! include_generated {
    ($package:literal) => {
        include!(concat!(env!("SHOPMESH_API_GENERATED"), "/", $package, ".rs"));
    };
}

/// Types shared by every service (`shopmesh.common.v1`).
pub mod common {
    pub mod v1 {
        include_generated!("shopmesh.common.v1");
    }
}

/// Accounts (`shopmesh.user.v1`).
pub mod user {
    pub mod v1 {
        include_generated!("shopmesh.user.v1");
    }
}

/// Orders (`shopmesh.order.v1`).
pub mod order {
    pub mod v1 {
        include_generated!("shopmesh.order.v1");
    }
}

/// Charges and refunds (`shopmesh.payment.v1`).
pub mod payment {
    pub mod v1 {
        include_generated!("shopmesh.payment.v1");
    }
}

/// Products and their prices (`shopmesh.catalog.v1`).
pub mod catalog {
    pub mod v1 {
        include_generated!("shopmesh.catalog.v1");
    }
}

/// Stock per SKU and its allocation to orders (`shopmesh.inventory.v1`).
pub mod inventory {
    pub mod v1 {
        include_generated!("shopmesh.inventory.v1");
    }
}

/// Messages sent to users about their orders (`shopmesh.notification.v1`).
pub mod notification {
    pub mod v1 {
        include_generated!("shopmesh.notification.v1");
    }
}

/// Every file of `proto/` with its imports and comments, encoded: served by server reflection
/// so that grpcurl and other tools need no `.proto` files.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shopmesh_descriptor.bin"));

/// What a method's proto says about repeating it (`option idempotency_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Idempotency {
    /// Not declared: the call may have side effects that a repeat would double.
    Unknown,
    /// A read: repeating it changes nothing.
    NoSideEffects,
    /// Repeating it leaves the same state as doing it once.
    Idempotent,
}

/// What the proto says about repeating one method, for the retry layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallPolicy {
    /// The method's `idempotency_level`.
    pub idempotency: Idempotency,
    /// The field number of the input message's `request_id` (AIP-155), if it has one: a call
    /// that sets it may be repeated, since the server answers repeats from its record.
    pub request_id_field: Option<u32>,
}

include!(concat!(env!("SHOPMESH_API_GENERATED"), "/call_policy.rs"));

/// The call policy of a method given its gRPC path (`/package.Service/Method`), or `None` for
/// a path outside the shopmesh API.
pub fn call_policy(path: &str) -> Option<CallPolicy> {
    CALL_POLICY.binary_search_by(|(p, _)| (*p).cmp(path)).ok().map(|i| CALL_POLICY[i].1)
}

/// The declared idempotency of a method given its gRPC path, or `None` outside the API.
pub fn idempotency(path: &str) -> Option<Idempotency> {
    call_policy(path).map(|p| p.idempotency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_policy_follows_the_protos() {
        assert_eq!(idempotency("/shopmesh.user.v1.UserService/GetUser"), Some(Idempotency::NoSideEffects));
        assert_eq!(idempotency("/shopmesh.user.v1.UserService/UpdateUser"), Some(Idempotency::Idempotent));
        assert_eq!(idempotency("/shopmesh.payment.v1.PaymentService/Charge"), Some(Idempotency::Unknown));
        assert_eq!(idempotency("/shopmesh.order.v1.OrderService/Nope"), None);
        let charge = call_policy("/shopmesh.payment.v1.PaymentService/Charge").expect("listed");
        assert_eq!(charge.request_id_field, Some(4));
        let get = call_policy("/shopmesh.user.v1.UserService/GetUser").expect("listed");
        assert_eq!(get.request_id_field, None);
        for read in ["GetProduct", "ListProducts", "BatchGetProducts"] {
            let path = format!("/shopmesh.catalog.v1.CatalogService/{read}");
            assert_eq!(idempotency(&path), Some(Idempotency::NoSideEffects), "{path}");
        }
        let update = "/shopmesh.catalog.v1.CatalogService/UpdateProduct";
        assert_eq!(idempotency(update), Some(Idempotency::Idempotent));
        // A repeated CreateProduct answers ALREADY_EXISTS, so it is not repeated for the caller.
        let create = call_policy("/shopmesh.catalog.v1.CatalogService/CreateProduct").expect("listed");
        assert_eq!((create.idempotency, create.request_id_field), (Idempotency::Unknown, None));
        // The inventory's admin call is safe to repeat, its reads and the notifications' too.
        let set_stock = "/shopmesh.inventory.v1.InventoryService/SetStock";
        assert_eq!(idempotency(set_stock), Some(Idempotency::Idempotent));
        for read in ["InventoryService/GetStock", "InventoryService/ListStock"] {
            let path = format!("/shopmesh.inventory.v1.{read}");
            assert_eq!(idempotency(&path), Some(Idempotency::NoSideEffects), "{path}");
        }
        for read in ["ListNotifications", "GetNotification"] {
            let path = format!("/shopmesh.notification.v1.NotificationService/{read}");
            assert_eq!(idempotency(&path), Some(Idempotency::NoSideEffects), "{path}");
        }
        // Every RPC is in the table: 4 each of user, order and payment, 5 of catalog, 3 of
        // inventory, 2 of notification.
        assert_eq!(CALL_POLICY.len(), 22);
    }

    #[test]
    fn descriptor_set_holds_every_service() {
        use prost::Message as _;
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("decodes");
        let services: Vec<String> = fds
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(move |s| format!("{}.{}", f.package(), s.name())))
            .collect();
        for name in [
            "shopmesh.user.v1.UserService",
            "shopmesh.order.v1.OrderService",
            "shopmesh.payment.v1.PaymentService",
            "shopmesh.catalog.v1.CatalogService",
            "shopmesh.inventory.v1.InventoryService",
            "shopmesh.notification.v1.NotificationService",
        ] {
            assert!(services.iter().any(|s| s == name), "{name} missing from {services:?}");
        }
    }
}
