//! Every SQL statement of the payment service, portable across SQLite and PostgreSQL.

use std::time::Duration;

use shopmesh::mesh::db::{self, Backend, Pool};
use shopmesh::mesh::ids;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row as _};

use crate::domain::{NewCharge, Payment, State};

const COLUMNS: &str = "id, request_id, order_id, user_id, amount_minor, currency_code, state, \
                       decline_reason, refund_request_id, create_time_ms, update_time_ms";

/// The statements that read the database's clock (for the leases replicas share), for one
/// engine.
/// Stores the processor's answer on a payment still PROCESSING.
const FINISH: &str = "UPDATE payments SET state = $1, decline_reason = $2, update_time_ms = $3 \
                      WHERE id = $4 AND state = 'PROCESSING'";

/// Finishes a refund: the processor returned the money.
const MARK_REFUNDED: &str =
    "UPDATE payments SET state = 'REFUNDED', update_time_ms = $1 WHERE id = $2 AND state = 'REFUNDING'";

#[derive(Debug)]
struct Clocked {
    insert: &'static str,
    claim: &'static str,
    claim_refund: &'static str,
}

/// What makes the PROCESSING insert's transaction commit without waiting for its WAL to reach
/// the disk (PostgreSQL's `SET LOCAL synchronous_commit = off`, inside the one statement, so
/// no BEGIN and COMMIT round trips; the setting ends with the transaction).
///
/// Safe because nothing is answered on that commit alone. The Charge that wrote the row
/// answers only after `FINISH`, a synchronous commit on the same server, which flushes the WAL
/// up to and including this row. A row lost with a crash before that was never answered: the
/// Charge fails UNAVAILABLE (the server went away, or `FINISH` finds no row: `Error::Lost`),
/// the order stays PENDING_PAYMENT, and the retry writes the row again and asks the processor
/// under the same key, which answers what it did the first time (issue 15's keys, not this
/// row, keep a charge to one). A duplicate that read the row meanwhile answered PROCESSING, "not known".
/// Each synchronous commit costs a WAL flush; the Charge had two.
///
/// SQLite commits in WAL mode with `synchronous = NORMAL` flush at checkpoints, not per
/// commit, so it needs nothing here.
macro_rules! async_commit {
    (sqlite) => {
        ""
    };
    (postgres) => {
        " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit"
    };
}

macro_rules! clocked {
    ($engine:ident) => {
        Clocked {
            insert: concat!(
                "INSERT INTO payments (id, request_id, order_id, user_id, amount_minor, currency_code, \
                 state, create_time_ms, update_time_ms, lease_until_ms) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, ",
                shopmesh::db_now_ms!($engine),
                " + $10",
                async_commit!($engine),
                // `WHERE true`: SQLite's parser needs it before an upsert's ON CONFLICT.
                " WHERE true ON CONFLICT (order_id, request_id) DO NOTHING"
            ),
            claim: concat!(
                "UPDATE payments SET lease_until_ms = ",
                shopmesh::db_now_ms!($engine),
                " + $1 WHERE id = $2 AND state = $3 AND lease_until_ms <= ",
                shopmesh::db_now_ms!($engine)
            ),
            claim_refund: concat!(
                "UPDATE payments SET state = 'REFUNDING', refund_request_id = $1, update_time_ms = $2, \
                 lease_until_ms = ",
                shopmesh::db_now_ms!($engine),
                " + $3 WHERE id = $4 AND state = 'SUCCEEDED'"
            ),
        }
    };
}

static SQLITE: Clocked = clocked!(sqlite);
static POSTGRES: Clocked = clocked!(postgres);

/// The payment service's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    /// Its engine's statements that read the database's clock.
    clocked: &'static Clocked,
    /// How long a Charge owns the PROCESSING payment it wrote or claimed.
    lease_ms: i64,
}

impl Store {
    /// A store over a migrated pool, whose Charges own a PROCESSING payment for `lease`.
    pub fn new(pool: Pool, lease: Duration) -> Self {
        let clocked = match Backend::of_pool(&pool) {
            Backend::Sqlite => &SQLITE,
            Backend::Postgres => &POSTGRES,
        };
        Self { pool, clocked, lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX) }
    }

    /// Records `charge` as PROCESSING, owned by this call for the lease, unless its order
    /// already has a payment under its request id; `None` if it had.
    pub async fn insert_processing(&self, charge: &NewCharge) -> Result<Option<Payment>, sqlx::Error> {
        let now = ids::now_ms();
        let payment = Payment {
            id: ids::new_id(),
            request_id: charge.request_id.clone(),
            order_id: charge.order_id.clone(),
            user_id: charge.user_id.clone(),
            amount_minor: charge.amount_minor,
            currency_code: charge.currency_code.clone(),
            state: State::Processing,
            decline_reason: None,
            refund_request_id: None,
            create_time_ms: now,
            update_time_ms: now,
        };
        // On SQLite committed on this thread unless it cannot be (`Pool::execute`).
        let inserted = self
            .pool
            .execute(
                self.clocked.insert,
                &[
                    (&payment.id).into(),
                    (&payment.request_id).into(),
                    (&payment.order_id).into(),
                    (&payment.user_id).into(),
                    payment.amount_minor.into(),
                    (&payment.currency_code).into(),
                    payment.state.as_str().into(),
                    now.into(),
                    now.into(),
                    self.lease_ms.into(),
                ],
            )
            .await?;
        Ok((inserted == 1).then_some(payment))
    }

    /// Takes a payment in `state` (PROCESSING or REFUNDING) whose lease ran out (its owner died
    /// or gave up) for this call, for the lease: a compare-and-set on the row, so of several
    /// callers exactly one gets `true`, whatever their clocks say.
    pub async fn claim(&self, id: &str, state: State) -> Result<bool, sqlx::Error> {
        let claimed = sqlx::query(self.clocked.claim)
            .bind(self.lease_ms)
            .bind(id)
            .bind(state.as_str())
            .execute(&mut db::acquire(&self.pool).await?)
            .await?
            .rows_affected();
        Ok(claimed == 1)
    }

    /// Gives up this call's lease on a payment still in `state`, so the next call need not
    /// wait for it to run out.
    pub async fn release(&self, id: &str, state: State) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE payments SET lease_until_ms = 0 WHERE id = $1 AND state = $2")
            .bind(id)
            .bind(state.as_str())
            .execute(&mut db::acquire(&self.pool).await?)
            .await
            .map(drop)
    }

    /// Claims a SUCCEEDED payment for the Refund with `request_id`: REFUNDING under that key,
    /// owned by this call for the lease. A compare-and-set, so of concurrent Refunds exactly
    /// one gets `true`; a key another payment of the order was refunded under is a unique
    /// violation.
    pub async fn claim_refund(&self, id: &str, request_id: &str) -> Result<bool, sqlx::Error> {
        // On SQLite committed on this thread unless it cannot be (`Pool::execute`).
        let claimed = self
            .pool
            .execute(
                self.clocked.claim_refund,
                &[request_id.into(), ids::now_ms().into(), self.lease_ms.into(), id.into()],
            )
            .await?;
        Ok(claimed == 1)
    }

    /// Stores the processor's answer on `payment`, PROCESSING when it was read. A payment some
    /// other call already finished is left alone; either way the stored payment is returned.
    pub async fn finish(
        &self,
        payment: &Payment,
        state: State,
        decline_reason: Option<&str>,
    ) -> Result<Option<Payment>, sqlx::Error> {
        let now = ids::now_ms();
        // On SQLite committed on this thread unless it cannot be (`Pool::execute`).
        let changed = self
            .pool
            .execute(
                FINISH,
                &[state.as_str().into(), decline_reason.into(), now.into(), (&payment.id).into()],
            )
            .await?;
        // The changed row is `payment` with what was just set: nothing else of a payment
        // ever changes, so it need not be read back.
        let finished = (changed == 1).then(|| Payment {
            state,
            decline_reason: decline_reason.map(str::to_owned),
            update_time_ms: now,
            ..payment.clone()
        });
        match finished {
            Some(payment) => Ok(Some(payment)),
            // Finished by another call meanwhile (or gone): the stored payment decides.
            None => self.get(&payment.id).await,
        }
    }

    /// Marks a REFUNDING payment REFUNDED, under the key that claimed it; `false` if it was not
    /// REFUNDING (another call finished it).
    pub async fn mark_refunded(&self, id: &str) -> Result<bool, sqlx::Error> {
        // On SQLite committed on this thread unless it cannot be (`Pool::execute`).
        let updated = self.pool.execute(MARK_REFUNDED, &[ids::now_ms().into(), id.into()]).await?;
        Ok(updated == 1)
    }

    /// The payment with `id`.
    pub async fn get(&self, id: &str) -> Result<Option<Payment>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM payments WHERE id = $1");
        let row = db::read_optional(&self.pool, || sqlx::query(AssertSqlSafe(sql.as_str())).bind(id)).await?;
        row.map(|r| from_row(&r)).transpose()
    }

    /// The payment of `order_id` created by the Charge with `request_id` (a key is scoped to
    /// its order).
    pub async fn by_request_id(
        &self,
        order_id: &str,
        request_id: &str,
    ) -> Result<Option<Payment>, sqlx::Error> {
        let sql =
            AssertSqlSafe(format!("SELECT {COLUMNS} FROM payments WHERE order_id = $1 AND request_id = $2"));
        let row = sqlx::query(sql)
            .bind(order_id)
            .bind(request_id)
            .fetch_optional(&mut db::acquire(&self.pool).await?)
            .await?;
        row.map(|r| from_row(&r)).transpose()
    }

    /// Up to `limit` payments of `order_id` after id `after`, oldest first.
    pub async fn list_by_order(
        &self,
        order_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Payment>, sqlx::Error> {
        let sql =
            format!("SELECT {COLUMNS} FROM payments WHERE order_id = $1 AND id > $2 ORDER BY id LIMIT $3");
        let rows = db::read_all(&self.pool, || {
            sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(order_id)
                .bind(after.unwrap_or(""))
                .bind(i64::from(limit))
        })
        .await?;
        rows.iter().map(from_row).collect()
    }
}

fn from_row(row: &AnyRow) -> Result<Payment, sqlx::Error> {
    let state: String = row.try_get("state")?;
    Ok(Payment {
        id: row.try_get("id")?,
        request_id: row.try_get("request_id")?,
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        amount_minor: row.try_get("amount_minor")?,
        currency_code: row.try_get("currency_code")?,
        state: State::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "state".into(),
            source: format!("unknown payment state {state:?}").into(),
        })?,
        decline_reason: row.try_get("decline_reason")?,
        refund_request_id: row.try_get("refund_request_id")?,
        create_time_ms: row.try_get("create_time_ms")?,
        update_time_ms: row.try_get("update_time_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use shopmesh::mesh::service::MeshService as _;
    use shopmesh::mesh::testing;

    use super::*;

    fn charge(request_id: &str) -> NewCharge {
        NewCharge {
            order_id: "o1".into(),
            user_id: "u1".into(),
            amount_minor: 1250,
            currency_code: "EUR".into(),
            request_id: request_id.into(),
        }
    }

    /// On PostgreSQL the PROCESSING insert commits without waiting for the disk, and only its
    /// own transaction does: run inside a transaction, the insert leaves `synchronous_commit`
    /// off in it, and on again for the connection's next transaction (the FINISH that answers
    /// the Charge must wait for the disk).
    #[tokio::test]
    async fn only_the_processing_insert_commits_without_waiting_for_the_disk() {
        if !testing::backends().contains(&testing::Backend::Postgres) {
            return;
        }
        let db = testing::database(testing::Backend::Postgres, "payment_async_insert").await;
        let pool =
            db::open(&db.url, &testing::mesh_config(), crate::Payment::MIGRATIONS).await.expect("open");
        let mut conn = db::acquire(&pool).await.expect("connection");
        let setting = "SELECT current_setting('synchronous_commit')";
        let insert = || {
            sqlx::query(POSTGRES.insert)
                .bind("p1")
                .bind("r1")
                .bind("o1")
                .bind("u1")
                .bind(1250_i64)
                .bind("EUR")
                .bind("PROCESSING")
                .bind(1_i64)
                .bind(1_i64)
                .bind(10_000_i64)
        };
        sqlx::query("BEGIN").execute(&mut conn).await.expect("begin");
        assert_eq!(insert().execute(&mut conn).await.expect("insert").rows_affected(), 1);
        let inside: String = sqlx::query_scalar(setting).fetch_one(&mut conn).await.expect("setting");
        sqlx::query("COMMIT").execute(&mut conn).await.expect("commit");
        let after: String = sqlx::query_scalar(setting).fetch_one(&mut conn).await.expect("setting");
        assert_eq!((inside.as_str(), after.as_str()), ("off", "on"));
        // On its own, as the store runs it: the connection keeps waiting for the disk after it.
        assert_eq!(
            insert().execute(&mut conn).await.expect("insert").rows_affected(),
            0,
            "a repeat inserts nothing"
        );
        let after: String = sqlx::query_scalar(setting).fetch_one(&mut conn).await.expect("setting");
        assert_eq!(after, "on");
        drop(conn);
        pool.close().await;
        db.drop_database().await;
    }

    /// A payment's insert and finish answer it exactly as stored, whichever way the write went:
    /// on SQLite on the calling thread, or through sqlx when the write lock is taken (held here
    /// by another connection for a moment), and on PostgreSQL. A request id used already
    /// inserts nothing, and a payment finished already is left alone.
    #[tokio::test]
    async fn payments_are_answered_as_stored_whichever_way_they_are_written() {
        for backend in testing::backends() {
            let db = testing::database(backend, "payment_store").await;
            let pool =
                db::open(&db.url, &testing::mesh_config(), crate::Payment::MIGRATIONS).await.expect("open");
            let store = Store::new(pool.clone(), Duration::from_secs(30));

            let new = store.insert_processing(&charge("r1")).await.expect("insert").expect("new");
            assert_eq!(Some(&new), store.get(&new.id).await.expect("get").as_ref(), "{backend:?}");
            assert!(store.insert_processing(&charge("r1")).await.expect("insert").is_none(), "{backend:?}");

            let finished = store.finish(&new, State::Succeeded, None).await.expect("finish").expect("stored");
            assert_eq!(finished.state, State::Succeeded, "{backend:?}");
            assert_eq!(Some(&finished), store.get(&new.id).await.expect("get").as_ref(), "{backend:?}");
            // Finished already: left alone, and the stored payment is the answer.
            let again = store.finish(&new, State::Declined, Some("amount_over_limit")).await.expect("finish");
            assert_eq!(again.as_ref(), Some(&finished), "{backend:?}");

            if backend == testing::Backend::Sqlite {
                let other = store.insert_processing(&charge("r2")).await.expect("insert").expect("new");
                let path = db.url.trim_start_matches("sqlite://").to_owned();
                let holder = db::rusqlite::Connection::open(&path).expect("opens");
                holder.execute_batch("BEGIN IMMEDIATE").expect("takes the write lock");
                let release = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(200));
                    holder.execute_batch("COMMIT").expect("releases the write lock");
                });
                // Handed to sqlx, which waits out the lock.
                let started = std::time::Instant::now();
                let declined =
                    store.finish(&other, State::Declined, Some("amount_over_limit")).await.expect("finish");
                release.join().expect("holder");
                assert!(started.elapsed() >= Duration::from_millis(150), "written while the lock was held");
                let declined = declined.expect("stored");
                assert_eq!(declined.decline_reason.as_deref(), Some("amount_over_limit"));
                assert_eq!(Some(&declined), store.get(&other.id).await.expect("get").as_ref());
            }
            pool.close().await;
            db.drop_database().await;
        }
    }
}
