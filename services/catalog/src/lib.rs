//! The catalog service: the products that can be ordered, each named by its SKU, and their
//! prices (`shopmesh.catalog.v1.CatalogService`, port 50054 by default).
//!
//! The rules (SKUs, prices in active ISO 4217 currencies, update masks, etags, page tokens,
//! batch limits) live in [`domain`], the validation of each request in [`convert`] and the
//! statuses in `error`; its settings are [`CatalogConfig`].

pub mod config;
pub mod convert;
pub mod domain;
mod error;

pub use config::CatalogConfig;
pub use error::{Error as CatalogError, RESOURCE_TYPE};
