//! Every statement a store runs gets a span: [`Traced`] wraps a pooled connection or a
//! transaction and is the executor the stores use. Behind a transaction pooler it also keeps
//! each statement on one server connection (`pooler.rs`).

use futures::TryStreamExt as _;
use sqlx::any::Any;

use super::Tx;
use super::pooler;
use sqlx::Connection as _;

/// A connection (or transaction) whose every statement gets a child span following
/// OpenTelemetry's database conventions: named `<operation> <table>`, with the engine and the
/// SQL text (placeholders only, never values). Use `&mut traced` as the executor.
#[derive(Debug)]
pub struct Traced<C> {
    pub(super) conn: C,
    /// Through a transaction pooler (`pooler=transaction`): statements unnamed, and each one
    /// outside a transaction pinned by one of its own.
    pub(super) pooled: bool,
}

impl Traced<Tx> {
    /// Commits the transaction.
    ///
    /// # Errors
    /// The database's.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.conn.commit().await
    }

    /// Rolls the transaction back.
    ///
    /// # Errors
    /// The database's.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.conn.rollback().await
    }
}

/// A statement taken apart so its SQL can be read before it runs.
struct Statement {
    sql: sqlx::SqlStr,
    arguments: Option<Result<Option<sqlx::any::AnyArguments>, sqlx::error::BoxDynError>>,
    persistent: bool,
}

impl<'q> sqlx::Execute<'q, Any> for Statement {
    fn sql(self) -> sqlx::SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&sqlx::any::AnyStatement> {
        None
    }

    fn take_arguments(&mut self) -> Result<Option<sqlx::any::AnyArguments>, sqlx::error::BoxDynError> {
        self.arguments.take().unwrap_or(Ok(None))
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}

/// `INSERT INTO orders …` → ("INSERT", "orders"): the operation and the first table named.
fn operation_and_table(sql: &str) -> (&str, &str) {
    // A statement led by a data-modifying WITH (`WITH o AS (INSERT INTO orders ...) INSERT INTO
    // order_items ...`) is named after the first statement in it, the one the rest hangs on.
    let sql = match sql.split_once('(') {
        Some((head, rest))
            if head.split_whitespace().next().is_some_and(|w| w.eq_ignore_ascii_case("WITH")) =>
        {
            rest
        }
        _ => sql,
    };
    let mut words = sql.split_whitespace();
    let operation = words.next().unwrap_or("SQL");
    let mut table = "";
    let mut prev = operation;
    for word in words {
        if ["FROM", "INTO", "UPDATE"].iter().any(|k| prev.eq_ignore_ascii_case(k)) {
            table = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_');
            break;
        }
        prev = word;
    }
    if operation.eq_ignore_ascii_case("UPDATE") {
        table = sql.split_whitespace().nth(1).unwrap_or("");
    }
    (operation, table)
}

fn statement_span<'q, E: sqlx::Execute<'q, Any>>(
    mut query: E,
    conn: &sqlx::AnyConnection,
    pooled: bool,
) -> (Statement, tracing::Span) {
    let arguments = Some(query.take_arguments());
    // A named statement would outlive this server connection's turn with us (`pooler.rs`).
    let persistent = query.persistent() && !pooled;
    let sql = query.sql();
    let text = sql.as_str();
    let system = match conn.backend_name() {
        "PostgreSQL" => "postgresql",
        "SQLite" => "sqlite",
        other => other,
    };
    let span = span(system, text);
    (Statement { sql, arguments, persistent }, span)
}

/// The span of one statement on `system` (`sqlite`, `postgresql`), after OpenTelemetry's
/// database conventions; none when spans are not exported.
///
/// A statement's span is only ever read in the exported trace: log lines leave it out (a line
/// logged during a statement carries its call's span, see `telemetry`), and nothing is called
/// inside it. Made and dropped unexported, it was most of what reading the user table added
/// to a GetUser call (its SQL parsed for the name, its attributes copied, the span entered and
/// closed: 10 900 of 18 800 instructions, callgrind; docs/benchmarks.md).
pub(super) fn span(system: &str, sql: &str) -> tracing::Span {
    span_if(crate::mesh::telemetry::spans_exported(), system, sql)
}

fn span_if(exported: bool, system: &str, sql: &str) -> tracing::Span {
    if !exported {
        return tracing::Span::none();
    }
    let (operation, table) = operation_and_table(sql);
    tracing::info_span!(
        "db",
        otel.name = %format_args!("{operation} {table}"),
        otel.kind = "client",
        db.system.name = system,
        db.operation.name = operation,
        db.collection.name = table,
        db.query.text = sql,
    )
}

impl<'c, C> sqlx::Executor<'c> for &'c mut Traced<C>
where
    C: std::ops::DerefMut<Target = sqlx::AnyConnection> + Send + std::fmt::Debug,
{
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures::stream::BoxStream<
        'e,
        Result<sqlx::Either<sqlx::any::AnyQueryResult, sqlx::any::AnyRow>, sqlx::Error>,
    >
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        let pooled = self.pooled;
        let conn: &'c mut sqlx::AnyConnection = &mut self.conn;
        let (statement, span) = statement_span(query, conn, pooled);
        if !pooler::needs_pinning(pooled, conn) {
            return Box::pin(tracing_futures::Instrument::instrument(conn.fetch_many(statement), span));
        }
        // Collected before the pinning transaction ends; only behind a transaction pooler.
        let pinned = async move {
            let mut pinned = conn.begin().await?;
            let results: Result<Vec<_>, sqlx::Error> =
                tracing_futures::Instrument::instrument(pinned.fetch_many(statement), span)
                    .try_collect()
                    .await;
            pooler::end(pinned, results.is_ok()).await?;
            results
        };
        Box::pin(
            futures::stream::once(pinned)
                .map_ok(|results| futures::stream::iter(results.into_iter().map(Ok)))
                .try_flatten(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> futures::future::BoxFuture<'e, Result<Option<sqlx::any::AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Any>,
    {
        let pooled = self.pooled;
        let conn: &'c mut sqlx::AnyConnection = &mut self.conn;
        let (statement, span) = statement_span(query, conn, pooled);
        if !pooler::needs_pinning(pooled, conn) {
            return Box::pin(tracing::Instrument::instrument(conn.fetch_optional(statement), span));
        }
        Box::pin(async move {
            let mut pinned = conn.begin().await?;
            let row = tracing::Instrument::instrument(pinned.fetch_optional(statement), span).await;
            pooler::end(pinned, row.is_ok()).await?;
            row
        })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [sqlx::any::AnyTypeInfo],
    ) -> futures::future::BoxFuture<'e, Result<sqlx::any::AnyStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        let conn: &'c mut sqlx::AnyConnection = &mut self.conn;
        conn.prepare_with(sql, parameters)
    }

    // Required because sqlx's `macros` feature turns on its `offline` feature.
    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> futures::future::BoxFuture<'e, Result<sqlx::Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        let conn: &'c mut sqlx::AnyConnection = &mut self.conn;
        conn.describe(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_named_after_their_operation_and_table() {
        assert_eq!(operation_and_table("SELECT id FROM orders WHERE id = $1"), ("SELECT", "orders"));
        assert_eq!(operation_and_table("INSERT INTO payments (id) VALUES ($1)"), ("INSERT", "payments"));
        assert_eq!(operation_and_table("UPDATE orders SET state = $1"), ("UPDATE", "orders"));
        assert_eq!(
            operation_and_table(
                "WITH o AS (INSERT INTO orders (id) VALUES ($1) RETURNING id) \
                 INSERT INTO order_items (order_id) SELECT o.id FROM o"
            ),
            ("INSERT", "orders")
        );
    }

    #[test]
    fn a_statement_gets_its_span_only_when_spans_are_exported() {
        let made = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = made.clone();
        let subscriber =
            tracing_subscriber::layer::SubscriberExt::with(tracing_subscriber::registry(), NewSpans(seen));
        tracing::subscriber::with_default(subscriber, || {
            // A callsite another test's thread met first, with no subscriber, may still hold
            // that "never": ask again now this one is registered.
            tracing::callsite::rebuild_interest_cache();
            let none = span_if(false, "sqlite", "SELECT id FROM users WHERE id = ?1");
            assert!(none.is_none(), "no span when nothing exports it");
            let some = span_if(true, "sqlite", "SELECT id FROM users WHERE id = ?1");
            assert!(!some.is_none());
        });
        assert_eq!(*made.lock().expect("not poisoned"), ["db"], "the subscriber saw only the exported one");
    }

    /// Names of the spans a subscriber is told of.
    struct NewSpans(std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for NewSpans {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0.lock().expect("not poisoned").push(attrs.metadata().name());
        }
    }
}
