//! Point reads on read-only connections: [`Readers`]. The rules they keep are in `mod.rs`.
//!
//! A read never yields, so at most one connection per runtime thread is in use at a time: the
//! idle list needs no bound or wait queue.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{OpenFlags, OptionalExtension as _};

/// Read-only connections to one SQLite file.
pub(in crate::mesh::db) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Readers {
    pub(in crate::mesh::db) fn new(path: PathBuf) -> Self {
        Self { path, idle: Mutex::new(Vec::new()) }
    }

    fn open(&self) -> rusqlite::Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // rusqlite waits up to 5 s on a lock by default; here SQLITE_BUSY hands the read to sqlx.
        conn.busy_timeout(Duration::ZERO)?;
        Ok(conn)
    }

    /// `map` of the first row of `sql` (positional parameters `params`), `Some(None)` when it
    /// returns no row, and `None` when it could not be answered here (see the module docs).
    pub(in crate::mesh::db) fn row<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Option<Option<T>> {
        let idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => match self.open() {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::debug!(%err, path = %self.path.display(), "no inline SQLite reader; reading through sqlx");
                    return None;
                }
            },
        };
        let read = conn.prepare_cached(sql).and_then(|mut statement| {
            debug_assert!(
                super::positional(&statement),
                "{sql}: parameters must appear as $1, $2 ... in order"
            );
            statement.query_row(params, map).optional()
        });
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(conn);
        match read {
            Ok(row) => Some(row),
            Err(err) => {
                tracing::debug!(%err, sql, "inline SQLite read handed to sqlx");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, PathBuf, rusqlite::Connection) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.db");
        let writer = rusqlite::Connection::open(&path).expect("opens");
        writer
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER);")
            .expect("creates");
        (dir, path, writer)
    }

    const READ: &str = "SELECT n FROM t WHERE id = $1";

    #[test]
    fn reads_see_every_commit_and_missing_rows_are_none() {
        let (_dir, path, writer) = database();
        let readers = Readers::new(path);
        assert_eq!(readers.row(READ, ["a"], |r| r.get::<_, i64>(0)), Some(None));
        writer.execute("INSERT INTO t VALUES ('a', 1)", []).expect("inserts");
        assert_eq!(readers.row(READ, ["a"], |r| r.get::<_, i64>(0)), Some(Some(1)));
        writer.execute("UPDATE t SET n = 2 WHERE id = 'a'", []).expect("updates");
        assert_eq!(readers.row(READ, ["a"], |r| r.get::<_, i64>(0)), Some(Some(2)));
        // One connection served all three reads: it went back to the idle list each time.
        assert_eq!(readers.idle.lock().expect("lock").len(), 1);
    }

    #[test]
    fn the_connections_cannot_write() {
        let (_dir, path, _writer) = database();
        let readers = Readers::new(path.clone());
        assert_eq!(
            readers.row("INSERT INTO t VALUES ('b', 1) RETURNING n", [], |r| r.get::<_, i64>(0)),
            None
        );
        let check = rusqlite::Connection::open(&path).expect("opens");
        let rows: i64 = check.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("counts");
        assert_eq!(rows, 0);
    }

    #[test]
    fn what_cannot_be_answered_here_is_handed_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        // No file: read-only connections do not create one.
        let readers = Readers::new(dir.path().join("missing.db"));
        assert_eq!(readers.row(READ, ["a"], |r| r.get::<_, i64>(0)), None);
        assert!(!dir.path().join("missing.db").exists());
        // A statement the schema does not match.
        let (_dir, path, _writer) = database();
        let readers = Readers::new(path);
        assert_eq!(readers.row("SELECT n FROM nowhere WHERE id = $1", ["a"], |r| r.get::<_, i64>(0)), None);
    }

    #[test]
    fn a_locked_database_is_handed_back_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.db");
        // A rollback journal, not WAL: there a writer's exclusive lock shuts readers out, the
        // lock a reader may meet in WAL mode only during recovery.
        let writer = rusqlite::Connection::open(&path).expect("opens");
        writer
            .execute_batch("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER); INSERT INTO t VALUES ('a', 1);")
            .expect("creates");
        let readers = Readers::new(path);
        assert_eq!(readers.row(READ, ["a"], |r| r.get::<_, i64>(0)), Some(Some(1)));
        writer.execute_batch("BEGIN EXCLUSIVE;").expect("locks");
        // rusqlite's own default would wait 5 s for the lock.
        let started = std::time::Instant::now();
        assert_eq!(readers.row(READ, ["a"], |r| r.get::<_, i64>(0)), None);
        assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());
        writer.execute_batch("COMMIT;").expect("unlocks");
        assert_eq!(readers.row(READ, ["a"], |r| r.get::<_, i64>(0)), Some(Some(1)));
    }
}
