//! Placeholders of statements whose size depends on a batch: multi-row `VALUES` and `IN`
//! lists, numbered in the order they appear (as SQLite assigns them), and how many rows one
//! statement may bind. Such a text is best run with `.persistent(false)`: every batch size
//! would otherwise keep its own prepared statement.

/// Most parameters one statement binds: SQLite's limit (32 766 since 3.32; sqlx bundles a
/// newer one), under PostgreSQL's 65 535.
pub const MAX_PARAMS: usize = 32_766;

/// How many rows of `columns` parameters one statement binds at most.
pub fn rows_per_statement(columns: usize) -> usize {
    MAX_PARAMS / columns.max(1)
}

/// `rows` rows of `columns` placeholders each: `($1, $2), ($3, $4)` for 2 × 2.
pub fn values(rows: usize, columns: usize) -> String {
    let mut text = String::with_capacity(rows * columns * 6);
    for row in 0..rows {
        if row > 0 {
            text.push_str(", ");
        }
        text.push('(');
        text.push_str(&list_from(row * columns + 1, columns));
        text.push(')');
    }
    text
}

/// `$1, $2, …, $n`, for `IN (…)`.
pub fn list(n: usize) -> String {
    list_from(1, n)
}

fn list_from(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_the_order_they_appear() {
        assert_eq!(values(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values(1, 1), "($1)");
        assert_eq!(list(3), "$1, $2, $3");
        assert_eq!(rows_per_statement(6), 5_461);
        assert!(rows_per_statement(6) * 6 <= MAX_PARAMS);
    }
}
