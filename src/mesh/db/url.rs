//! Database URLs: which engine one names, how a SQLite file's is prepared, and how one is
//! shown without its secrets.

use std::path::Path;

use crate::mesh::Error;

use super::Pool;

/// Which database engine a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://path/to/file.db` (or `sqlite::memory:` for a single-connection test).
    Sqlite,
    /// `postgres://user:pass@host/db` or `postgresql://...`.
    Postgres,
}

impl Backend {
    /// The engine of `url`, or a configuration error naming the URL's scheme.
    pub fn of(url: &str) -> Result<Self, Error> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(Error::Config(format!(
                "unsupported database URL {:?}: use sqlite://<file> or postgres://...",
                redact(url)
            )))
        }
    }
}

impl Backend {
    /// The engine `pool` connects to.
    pub fn of_pool(pool: &Pool) -> Self {
        if pool.connect_options().database_url.scheme() == "sqlite" { Self::Sqlite } else { Self::Postgres }
    }
}

/// The file a SQLite URL names; `None` for an in-memory database or another engine's URL.
pub(super) fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    let memory = path.is_empty() || path == ":memory:" || rest.contains("mode=memory");
    (!memory).then_some(path)
}

/// Creates the directory of a SQLite file and makes the URL create the file if missing.
pub(super) fn prepare_sqlite(url: &str) -> Result<String, Error> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" {
        return Ok(url.to_owned());
    }
    if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Config(format!("cannot create database directory {}: {e}", dir.display())))?;
    }
    Ok(if query.contains("mode=") {
        url.to_owned()
    } else if query.is_empty() {
        format!("{url}?mode=rwc")
    } else {
        format!("{url}&mode=rwc")
    })
}

/// The URL with its secrets hidden, wherever a URL is shown (logs, errors, the banner): the
/// password of its userinfo (`user:***@`) and the value of every query parameter whose name
/// ends in `password` (libpq's `password` and `sslpassword`), whatever its case or encoding.
pub fn redact(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let (base, rest) = url.split_at(end);
    let mut out = String::with_capacity(url.len());
    // The userinfo ends at the last `@` before the query: a password may hold `/` or `@`.
    match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &base[scheme_end + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => {
                    out.push_str(&base[..scheme_end + 3]);
                    out.push_str(user);
                    out.push_str(":***");
                    out.push_str(&base[at..]);
                }
                None => out.push_str(base),
            }
        }
        _ => out.push_str(base),
    }
    let (query, fragment) = match rest.find('#') {
        Some(hash) => rest.split_at(hash),
        None => (rest, ""),
    };
    if let Some(query) = query.strip_prefix('?') {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((key, _)) if is_password_key(key) => {
                    out.push_str(key);
                    out.push_str("=***");
                }
                _ => out.push_str(pair),
            }
        }
    }
    out.push_str(fragment);
    out
}

/// Whether a query parameter's name (percent-decoded, any case) names a password.
fn is_password_key(key: &str) -> bool {
    let mut decoded = Vec::with_capacity(key.len());
    let bytes = key.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push(u8::try_from(hi * 16 + lo).unwrap_or(b'%'));
                i += 3;
            }
            (b'+', _, _) => {
                decoded.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    decoded.trim_ascii().to_ascii_lowercase().ends_with(b"password")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact("postgres://me:secret@db:5432/x"), "postgres://me:***@db:5432/x");
        assert_eq!(redact("postgres://me@db/x"), "postgres://me@db/x");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
    }

    #[test]
    fn password_query_parameters_and_odd_passwords_are_redacted() {
        let cases = [
            ("postgres://db/x?user=me&password=secret", "postgres://db/x?user=me&password=***"),
            ("postgres://db/x?password=secret", "postgres://db/x?password=***"),
            (
                "postgres://me@db/x?sslmode=require&sslpassword=secret&application_name=a",
                "postgres://me@db/x?sslmode=require&sslpassword=***&application_name=a",
            ),
            ("postgres://db/x?PassWord=secret", "postgres://db/x?PassWord=***"),
            ("postgres://db/x?pass%77ord=secret", "postgres://db/x?pass%77ord=***"),
            ("postgres://me:secret@db/x?password=secret#f", "postgres://me:***@db/x?password=***#f"),
            // A password holding `@` or `/` (unencoded) still ends at the last `@`.
            ("postgres://me:se@c/ret@db:5432/x", "postgres://me:***@db:5432/x"),
            ("postgres://db/x?sslmode=require", "postgres://db/x?sslmode=require"),
            ("sqlite://data/x.db?mode=rwc", "sqlite://data/x.db?mode=rwc"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
            assert!(!redact(url).contains("secret"), "{url}");
        }
    }

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(sqlite_file("sqlite://data/user.db?mode=rwc"), Some("data/user.db"));
        assert_eq!(sqlite_file("sqlite:///tmp/x.db"), Some("/tmp/x.db"));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://shared?mode=memory&cache=shared"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }

    #[test]
    fn sqlite_urls_create_their_file_and_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("nested/deeper/x.db");
        let url = format!("sqlite://{}", file.display());
        let prepared = prepare_sqlite(&url).expect("prepares");
        assert_eq!(prepared, format!("{url}?mode=rwc"));
        assert!(file.parent().is_some_and(Path::is_dir));
        assert_eq!(prepare_sqlite("sqlite::memory:").ok().as_deref(), Some("sqlite::memory:"));
    }
}
