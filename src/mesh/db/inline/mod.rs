//! Statements a SQLite store runs on the calling thread, without sqlx's thread hop.
//!
//! sqlx runs every SQLite statement on a worker thread of its own per connection and hands the
//! rows back over a channel: two thread wake-ups per statement, and a wait for one of the pool's
//! connections before that. For a read by primary key that was most of the cost (a profile of
//! GetUser reading the database: ~40% of its CPU in the kernel's task switch). For CreateOrder
//! on SQLite it was half the process's CPU (the worker threads: 49% of the samples, a third of
//! them switching) and most of its latency (10-16 ms per order waiting for one of the order
//! database's two connections), while the statements themselves take tens of microseconds once
//! their pages are in memory. So:
//!
//! - [`Readers`] (`read.rs`): read-only connections for point reads ([`crate::mesh::db::Pool::read_row_now`]).
//! - [`Writer`] (`write.rs`): one connection per file for single-statement writes
//!   ([`crate::mesh::db::Pool::execute`], [`crate::mesh::db::Pool::write_row_now`]) and for a
//!   consumer's batch as one short transaction ([`crate::mesh::db::Pool::transaction_now`]:
//!   `BEGIN IMMEDIATE`, its statements, `COMMIT`, all on the calling thread). Through sqlx the
//!   order service's fulfilments held the order file's write lock across three thread
//!   wake-ups (the inbox, the update, COMMIT), and under CreateOrder load about one order write
//!   in three found the file locked meanwhile.
//!
//! The rules that keep this safe:
//! - **Never waits on a lock.** The busy timeout is zero: if SQLite answers `SQLITE_BUSY` (a
//!   writer through sqlx holding the write lock, a checkpoint or recovery holding the WAL
//!   index), the statement fails at once. Every write here is tried again after short sleeps
//!   of the task, not the thread (`BUSY_WAITS`, 27 ms in all), then handed to sqlx, whose
//!   worker thread may wait. Any other failure (no file yet, a schema the statement does not
//!   match, a constraint) is handed to sqlx at once, which then reports the error as usual.
//! - **Never repeats a write.** A statement outside a transaction (autocommit) either commits
//!   whole or, when `sqlite3_step` fails, is rolled back whole; a transaction that fails
//!   anywhere before its COMMIT is rolled back whole: so a write that failed here changed
//!   nothing and may be run again through sqlx, and one that succeeded is never handed back.
//!   A statement is stepped to its end before it counts as done (a `RETURNING` statement
//!   commits on its last step, not its first), and a connection left inside a transaction is
//!   rolled back, or dropped, before anything else runs on it.
//! - **No fsync on the runtime's threads.** Only WAL files are written here, with
//!   `synchronous = NORMAL` (a commit appends to the WAL without syncing) and the connection's
//!   own checkpoints off: every [`CHECKPOINT_EVERY`] commits a checkpoint, whose fsync this is,
//!   runs on tokio's blocking pool instead, and makes the WAL start over once it reaches
//!   [`RESTART_AT_PAGES`] (`write.rs` says why it must, and why not every time).
//! - **Sees every commit.** In WAL mode a statement outside a transaction reads the latest
//!   committed state, whichever connection wrote it.
//! - **Short by construction.** Only statements that touch a handful of rows by key belong
//!   here; a scan would stall the async runtime's thread. A page not in the operating system's
//!   cache costs a disk read on this thread.
//!
//! These connections are outside sqlx's pool and its `--db-max-connections` bound: at most one
//! reader per runtime thread, and one writer per file.

mod read;
mod write;

pub(in crate::mesh::db) use read::Readers;
pub(in crate::mesh::db) use write::{CHECKPOINT_EVERY, NotWritten, RESTART_AT_PAGES, Writer};

/// Whether `statement`'s parameters are `$1`, `$2` ... in the order they first appear, so that
/// binding by position (as the stores do) binds by number, as sqlx's SQLite driver does.
fn positional(statement: &rusqlite::Statement<'_>) -> bool {
    (1..=statement.parameter_count())
        .all(|i| statement.parameter_name(i).is_none_or(|name| name == format!("${i}")))
}
