//! Running through a transaction-pooling PgBouncer older than 1.21 (Debian 12 ships 1.18):
//! the `pooler=transaction` URL parameter, and the pinning that keeps every statement on one
//! server connection.
//!
//! Such a pooler hands a client's next message to any server connection once the server has
//! said it is idle (ReadyForQuery outside a transaction). sqlx sends a statement with parameters
//! as Parse+Describe+Sync, then Bind+Execute+Sync: between the two the pooler may switch
//! servers, so the Bind finds no statement, or another client's statement of the same name
//! (sqlx numbers its statements per connection: `sqlx_s_1` exists on every server). With the
//! parameter, each statement outside a transaction runs inside one (BEGIN … COMMIT, which the
//! pooler keeps on one server) and is unnamed, so nothing outlives it on that server. A
//! transaction the store opened is already on one server; its statements are unnamed too.
//! Session-level state (advisory locks, SET) is only safe within one such transaction: the
//! migrator's lock is taken inside the transaction that holds the whole migration run.
//!
//! PgBouncer ≥ 1.21 with `max_prepared_statements` > 0, or session pooling, needs none of this:
//! leave the parameter out (docs/operations.md, "Poolers").

use sqlx::any::Any;
use sqlx::{AnyConnection, Connection as _, Transaction};

use crate::mesh::Error;

/// The URL parameter (ours, removed before sqlx reads the URL) naming the pooler in between.
const PARAMETER: &str = "pooler";

/// `url` without the `pooler=` parameter, and whether it names a transaction pooler.
/// `pooler=session` is accepted and changes nothing (a session pooler keeps a client on one
/// server); any other value is a configuration error.
pub(super) fn parse(url: &str) -> Result<(String, bool), Error> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), false));
    };
    let mut transaction = false;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((PARAMETER, "transaction")) => transaction = true,
            Some((PARAMETER, "session")) => {}
            Some((PARAMETER, other)) => {
                return Err(Error::Config(format!(
                    "unknown pooler={other:?} in the database URL: use pooler=transaction (PgBouncer's \
                     transaction pooling before 1.21) or pooler=session"
                )));
            }
            _ => kept.push(pair),
        }
    }
    if transaction && !kept.iter().any(|pair| pair.starts_with("statement-cache-capacity=")) {
        // The migrator's statements are named (only the stores' go through `Traced`); uncached,
        // no name is used again on a later server connection that never saw it.
        kept.push("statement-cache-capacity=0");
    }
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((url, transaction))
}

/// Ends the transaction that pinned a statement: committed when the statement succeeded,
/// rolled back otherwise (it failed, and so did the transaction). One dropped before this, as
/// when a deadline cancels the call, is rolled back by sqlx on the connection's next use, so
/// the pool never hands out a connection left inside it.
pub(super) async fn end(pinned: Transaction<'_, Any>, ok: bool) -> Result<(), sqlx::Error> {
    if ok { pinned.commit().await } else { pinned.rollback().await }
}

/// Whether a statement on `conn` must be pinned by a transaction of its own: through a
/// transaction pooler (`pooled`), outside a transaction.
pub(super) fn needs_pinning(pooled: bool, conn: &AnyConnection) -> bool {
    pooled && !conn.is_in_transaction()
}

/// Runs the migrator on one connection inside one transaction, so its session advisory lock,
/// its statements and their unlock all meet the same server. Named statements left on that
/// server by other clients (sqlx names its statements from 1 on every connection) are dropped
/// before and after; the migrator runs in a savepoint so that when it fails (a replica racing
/// to create the migrations table) the lock it took is still released here: a session lock
/// left on a pooled server connection would hold every later migration forever.
pub(super) async fn migrate(
    conn: &mut AnyConnection,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), Error> {
    let mut pinned = conn.begin().await?;
    sqlx::raw_sql("DEALLOCATE ALL").fetch_optional(&mut *pinned).await?;
    let mut attempt = pinned.begin().await?;
    // `run_direct` is `run` on a connection already held: sqlx's way around `run`'s `Acquire`
    // bound, which a Send future over `&mut AnyConnection` cannot meet.
    let ran = migrator.run_direct(None, &mut *attempt, false).await;
    end(attempt, ran.is_ok()).await?;
    sqlx::raw_sql("SELECT pg_advisory_unlock_all()").fetch_optional(&mut *pinned).await?;
    sqlx::raw_sql("DEALLOCATE ALL").fetch_optional(&mut *pinned).await?;
    end(pinned, ran.is_ok()).await?;
    Ok(ran?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pooler_parameter_is_ours_and_removed() {
        let parsed = |url: &str| parse(url).ok();
        assert_eq!(parsed("postgres://u@h/db"), Some(("postgres://u@h/db".into(), false)));
        assert_eq!(
            parsed("postgres://u@h/db?pooler=transaction"),
            Some(("postgres://u@h/db?statement-cache-capacity=0".into(), true))
        );
        assert_eq!(
            parsed("postgres://u@h/db?sslmode=disable&pooler=transaction&application_name=x"),
            Some((
                "postgres://u@h/db?sslmode=disable&application_name=x&statement-cache-capacity=0".into(),
                true
            ))
        );
        assert_eq!(parsed("postgres://u@h/db?pooler=session"), Some(("postgres://u@h/db".into(), false)));
        let Err(Error::Config(message)) = parse("postgres://u:secret@h/db?pooler=statement") else {
            panic!("statement pooling (no transactions at all) must be refused");
        };
        assert!(message.contains("pooler=transaction") && !message.contains("secret"), "{message}");
    }
}
