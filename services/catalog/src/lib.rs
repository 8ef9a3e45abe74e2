//! The catalog service: the products that can be ordered, each named by its SKU, and their
//! prices (`shopmesh.catalog.v1.CatalogService`, port 50054 by default).
//!
//! The rules (SKUs, prices in active ISO 4217 currencies, update masks, etags, page tokens,
//! batch limits) live in [`domain`]; its settings are [`CatalogConfig`].

pub mod config;
pub mod domain;

pub use config::CatalogConfig;
