//! A read URL's replicas: one URL (a CloudNativePG `-ro` Service, which balances by itself),
//! several comma-separated URLs, or one URL with several hosts as libpq writes it
//! (`postgres://u:p@replica-1:5432,replica-2:5432/db`), each host a replica of its own.

/// The URL of each replica `read_url` names (empty for an empty setting).
pub(super) fn split(read_url: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for piece in read_url.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match urls.last_mut() {
            // A piece without a scheme continues the URL before it (another host of it).
            Some(last) if !piece.contains("://") => {
                last.push(',');
                last.push_str(piece);
            }
            _ => urls.push(piece.to_owned()),
        }
    }
    urls.iter().flat_map(|url| hosts(url)).collect()
}

/// `url` once per host of its host list.
fn hosts(url: &str) -> Vec<String> {
    let (start, stop) = host_list(url);
    let (prefix, list, suffix) = (&url[..start], &url[start..stop], &url[stop..]);
    list.split(',').filter(|h| !h.is_empty()).map(|host| format!("{prefix}{host}{suffix}")).collect()
}

/// A replica URL's `host:port` (no credentials), for logs and labels.
pub(super) fn address(url: &str) -> String {
    let (start, stop) = host_list(url);
    url[start..stop].to_owned()
}

/// Where `url`'s host list starts and ends: after the userinfo (which ends at the last `@`
/// before the query, as `redact` reads it) and before the path.
fn host_list(url: &str) -> (usize, usize) {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let start = url[..end].rfind('@').map_or(scheme_end, |at| at + 1).max(scheme_end);
    let stop = url[start..end].find('/').map_or(end, |slash| start + slash);
    (start, stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_url_names_one_replica_per_host() {
        assert_eq!(split(""), Vec::<String>::new());
        assert_eq!(split("postgres://u:p@db-ro:5432/x"), ["postgres://u:p@db-ro:5432/x"]);
        assert_eq!(
            split("postgres://u:p@r1:5432,r2:5433/x?sslmode=disable"),
            ["postgres://u:p@r1:5432/x?sslmode=disable", "postgres://u:p@r2:5433/x?sslmode=disable"]
        );
        assert_eq!(
            split("postgres://u@r1/x, postgresql://v@r2/y"),
            ["postgres://u@r1/x", "postgresql://v@r2/y"]
        );
        assert_eq!(address("postgres://u:se@cret@r1:5432/x?password=p"), "r1:5432");
        assert_eq!(address("postgres://r2/x"), "r2");
    }
}
