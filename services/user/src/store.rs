//! Every SQL statement of the user service. Portable SQL: the same text runs on SQLite and
//! PostgreSQL through sqlx `Any`.

use shopmesh::mesh::db::{self, Pool};
use shopmesh::mesh::ids;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::domain::{NewUser, User, UserPatch};

const COLUMNS: &str = "id, email, display_name, active, request_id, create_time_ms, update_time_ms";
/// GetUser's read, spelled out (not formatted from [`COLUMNS`]) so it is built once.
const BY_ID: &str = "SELECT id, email, display_name, active, request_id, create_time_ms, update_time_ms \
                     FROM users WHERE id = $1";

/// What inserting a user led to.
#[derive(Debug)]
pub enum Created {
    /// A new row.
    Inserted(User),
    /// A user already created with the same request id (a replay, or a reuse to reject).
    SameRequest(User),
    /// Another user has the email.
    EmailTaken,
}

/// Most users a replica keeps in memory.
const CACHE_CAPACITY: u64 = 100_000;

/// The user service's database, and its read cache of users by id.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Users by id, each kept for the cache's time to live; `None` when it is zero.
    cache: Option<mini_moka::sync::Cache<String, User>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("cached_users", &self.cache.as_ref().map(|c| c.entry_count())).finish()
    }
}

impl Store {
    /// A store over a migrated pool that reads the database on every call.
    pub fn new(pool: Pool) -> Self {
        Self { pool, cache: None }
    }

    /// The store, keeping each user it reads or writes for `ttl` (zero: no cache). GetUser is
    /// the mesh's hottest read (every order checks its user): from memory it costs no thread
    /// hop to SQLite and no round trip to PostgreSQL. Updates through this store replace the
    /// cached user; other replicas' updates are seen once `ttl` has passed.
    #[must_use]
    pub fn with_cache(mut self, ttl: std::time::Duration) -> Self {
        self.cache = (!ttl.is_zero()).then(|| {
            mini_moka::sync::Cache::builder().max_capacity(CACHE_CAPACITY).time_to_live(ttl).build()
        });
        self
    }

    /// Inserts a user unless its email or request id is taken; says which.
    pub async fn create(&self, new: &NewUser) -> Result<Created, sqlx::Error> {
        let now = ids::now_ms();
        let user = User {
            id: ids::new_id(),
            email: new.email.clone(),
            display_name: new.display_name.clone(),
            active: true,
            request_id: new.request_id.clone(),
            create_time_ms: now,
            update_time_ms: now,
        };
        // ON CONFLICT DO NOTHING instead of catching the unique violation: both engines support
        // it, and it leaves no aborted transaction behind on PostgreSQL.
        let inserted = sqlx::query(
            "INSERT INTO users (id, email, display_name, active, request_id, create_time_ms, update_time_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.display_name)
        .bind(i64::from(user.active))
        .bind(&user.request_id)
        .bind(user.create_time_ms)
        .bind(user.update_time_ms)
        .execute(&mut db::acquire(&self.pool).await?)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Created::Inserted(user));
        }
        if let Some(request_id) = &new.request_id
            && let Some(existing) = self.by_request_id(request_id).await?
        {
            return Ok(Created::SameRequest(existing));
        }
        Ok(Created::EmailTaken)
    }

    async fn by_request_id(&self, request_id: &str) -> Result<Option<User>, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM users WHERE request_id = $1"));
        let row =
            sqlx::query(sql).bind(request_id).fetch_optional(&mut db::acquire(&self.pool).await?).await?;
        row.map(|r| from_row(&r)).transpose()
    }

    /// The user with `id`, if any.
    pub async fn get(&self, id: &str) -> Result<Option<User>, sqlx::Error> {
        if let Some(user) = self.cache.as_ref().and_then(|c| c.get(&id.to_owned())) {
            return Ok(Some(user));
        }
        // On a SQLite file, read at once on this thread (no hop to sqlx's worker thread).
        let user = match self.pool.read_row_now(BY_ID, [id], from_sqlite_row) {
            Some(user) => user,
            None => {
                let row = db::read_optional(&self.pool, || sqlx::query(BY_ID).bind(id)).await?;
                row.map(|r| from_row(&r)).transpose()?
            }
        };
        // Unknown ids are not cached: a user created through another replica appears at once.
        if let (Some(cache), Some(user)) = (&self.cache, &user) {
            cache.insert(user.id.clone(), user.clone());
        }
        Ok(user)
    }

    /// Up to `limit` users with ids after `after`, in id (creation) order.
    pub async fn list(&self, after: Option<&str>, limit: u32) -> Result<Vec<User>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2");
        let rows = db::read_all(&self.pool, || {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(after.unwrap_or("")).bind(i64::from(limit))
        })
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Applies `patch` to user `id`; `None` if there is no such user.
    pub async fn update(&self, id: &str, patch: &UserPatch) -> Result<Option<User>, sqlx::Error> {
        // COALESCE keeps a column whose new value is NULL (not in the mask) as it was, so one
        // statement covers every mask without building SQL.
        let sql = sqlx::AssertSqlSafe(format!(
            "UPDATE users SET display_name = COALESCE($1, display_name), \
             active = COALESCE($2, active), update_time_ms = $3 WHERE id = $4 RETURNING {COLUMNS}"
        ));
        let row = sqlx::query(sql)
            .bind(&patch.display_name)
            .bind(patch.active.map(i64::from))
            .bind(ids::now_ms())
            .bind(id)
            .fetch_optional(&mut db::acquire(&self.pool).await?)
            .await?;
        let user = row.map(|r| from_row(&r)).transpose()?;
        if let (Some(cache), Some(user)) = (&self.cache, &user) {
            cache.insert(user.id.clone(), user.clone());
        }
        Ok(user)
    }
}

/// [`from_row`] for [`Pool::read_row_now`](db::Pool::read_row_now), whose columns are [`BY_ID`]'s.
fn from_sqlite_row(row: &db::rusqlite::Row<'_>) -> db::rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        email: row.get(1)?,
        display_name: row.get(2)?,
        active: row.get::<_, i64>(3)? != 0,
        request_id: row.get(4)?,
        create_time_ms: row.get(5)?,
        update_time_ms: row.get(6)?,
    })
}

fn from_row(row: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        active: row.try_get::<i64, _>("active")? != 0,
        request_id: row.try_get("request_id")?,
        create_time_ms: row.try_get("create_time_ms")?,
        update_time_ms: row.try_get("update_time_ms")?,
    })
}
