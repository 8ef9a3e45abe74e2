//! Every SQL statement of the catalog service. Portable SQL: the same text runs on SQLite and
//! PostgreSQL through sqlx `Any`.

use shopmesh::mesh::db::{self, Pool};
use shopmesh::mesh::ids;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::domain::{ActiveFilter, NewProduct, Price, Product, Sku, Update};

const COLUMNS: &str =
    "sku, display_name, unit_price_minor, currency_code, active, revision, create_time_ms, update_time_ms";

/// What an update led to.
#[derive(Debug)]
pub enum Updated {
    /// The product as changed.
    Changed(Product),
    /// No product has the SKU.
    NotFound,
    /// The product exists but is no longer at the revision the caller's etag names.
    Stale,
}

/// The catalog's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
}

impl Store {
    /// A store over a migrated pool.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Inserts a product; `None` if its SKU is taken.
    pub async fn create(&self, new: NewProduct) -> Result<Option<Product>, sqlx::Error> {
        let product = new.into_product(ids::now_ms());
        // ON CONFLICT DO NOTHING instead of catching the unique violation: both engines support
        // it, and it leaves no aborted transaction behind on PostgreSQL.
        let inserted = sqlx::query(
            "INSERT INTO products (sku, display_name, unit_price_minor, currency_code, active, revision, \
             create_time_ms, update_time_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(product.sku.as_str())
        .bind(&product.display_name)
        .bind(product.unit_price.amount_minor)
        .bind(&product.unit_price.currency_code)
        .bind(i64::from(product.active))
        .bind(product.revision)
        .bind(product.create_time_ms)
        .bind(product.update_time_ms)
        .execute(&mut db::acquire(&self.pool).await?)
        .await?
        .rows_affected();
        Ok((inserted == 1).then_some(product))
    }

    /// The product with `sku`, if any.
    pub async fn get(&self, sku: &Sku) -> Result<Option<Product>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM products WHERE sku = $1");
        let row = db::read_optional(&self.pool, || {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(sku.as_str())
        })
        .await?;
        row.map(|r| from_row(&r)).transpose()
    }

    /// The products among `skus` that exist, in no particular order; `skus` holds no repeats.
    pub async fn get_many(&self, skus: &[Sku]) -> Result<Vec<Product>, sqlx::Error> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        // One placeholder per SKU (at most 100): `= ANY($1)` would take one array, but only
        // PostgreSQL has arrays. Only placeholders are formatted in, never values.
        let placeholders: Vec<String> = (1..=skus.len()).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT {COLUMNS} FROM products WHERE sku IN ({})", placeholders.join(", "));
        // A product just created may not be on a replica yet: any missing is asked of the primary.
        let rows = db::read_found(&self.pool, skus.len(), || {
            skus.iter()
                .fold(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())), |query, sku| query.bind(sku.as_str()))
        })
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Up to `limit` products with SKUs after `after` that pass `filter`, in SKU order.
    pub async fn list(
        &self,
        after: Option<&Sku>,
        filter: ActiveFilter,
        limit: u32,
    ) -> Result<Vec<Product>, sqlx::Error> {
        // COALESCE($2, active) compares `active` with itself when there is no filter, so one
        // statement serves every filter.
        let sql = format!(
            "SELECT {COLUMNS} FROM products WHERE sku > $1 AND active = COALESCE($2, active) \
             ORDER BY sku LIMIT $3"
        );
        let rows = db::read_all(&self.pool, || {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(after.map_or("", Sku::as_str))
                .bind(filter.active().map(i64::from))
                .bind(i64::from(limit))
        })
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Applies `update` if the product exists and, when the update names a revision, is still
    /// at it; says which.
    pub async fn update(&self, update: &Update) -> Result<Updated, sqlx::Error> {
        let patch = &update.patch;
        // COALESCE keeps a column whose new value is NULL (not in the mask), so one statement
        // covers every mask; the revision check in the same statement makes the compare and the
        // write one atomic step on both engines.
        let sql = sqlx::AssertSqlSafe(format!(
            "UPDATE products SET display_name = COALESCE($1, display_name), \
             unit_price_minor = COALESCE($2, unit_price_minor), \
             currency_code = COALESCE($3, currency_code), active = COALESCE($4, active), \
             revision = revision + 1, update_time_ms = $5 \
             WHERE sku = $6 AND revision = COALESCE($7, revision) RETURNING {COLUMNS}"
        ));
        let mut conn = db::acquire(&self.pool).await?;
        let row = sqlx::query(sql)
            .bind(&patch.display_name)
            .bind(patch.unit_price.as_ref().map(|p| p.amount_minor))
            .bind(patch.unit_price.as_ref().map(|p| p.currency_code.as_str()))
            .bind(patch.active.map(i64::from))
            .bind(ids::now_ms())
            .bind(update.sku.as_str())
            .bind(update.expected_revision)
            .fetch_optional(&mut conn)
            .await?;
        if let Some(row) = row {
            return Ok(Updated::Changed(from_row(&row)?));
        }
        // Nothing matched: either there is no such product or its revision moved on. Products
        // are never deleted, so a row seen now was there at the UPDATE too.
        let exists = sqlx::query("SELECT 1 FROM products WHERE sku = $1")
            .bind(update.sku.as_str())
            .fetch_optional(&mut conn)
            .await?
            .is_some();
        Ok(if exists { Updated::Stale } else { Updated::NotFound })
    }
}

fn from_row(row: &AnyRow) -> Result<Product, sqlx::Error> {
    let sku: String = row.try_get("sku")?;
    Ok(Product {
        // Every stored SKU passed the same rule on its way in.
        sku: Sku::parse(&sku)
            .map_err(|problem| sqlx::Error::Decode(format!("sku {sku:?} {problem}").into()))?,
        display_name: row.try_get("display_name")?,
        unit_price: Price {
            amount_minor: row.try_get("unit_price_minor")?,
            currency_code: row.try_get("currency_code")?,
        },
        active: row.try_get::<i64, _>("active")? != 0,
        revision: row.try_get("revision")?,
        create_time_ms: row.try_get("create_time_ms")?,
        update_time_ms: row.try_get("update_time_ms")?,
    })
}
