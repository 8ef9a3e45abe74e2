//! The metrics table of docs/observability.md, read as data, and the check that a `/metrics`
//! exposition agrees with it: every series' family is in the table with exactly the labels
//! the table lists, so the table cannot drift from what the services export.

use std::collections::{BTreeMap, BTreeSet};

/// Labels a family's series have besides those the table lists: the histogram's buckets.
const STRUCTURAL: [&str; 2] = ["le", "quantile"];

/// Labels no metric may carry: a Prometheus Operator scrape sets them on the target.
const RESERVED: [&str; 3] = ["service", "job", "instance"];

/// `{metric name or prefix ending in '*': label names}` from the table's rows.
pub fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc = include_str!("../../../docs/observability.md");
    let mut out = BTreeMap::new();
    for row in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").collect();
        let (Some(names), Some(labels)) = (cells.first(), cells.last()) else { continue };
        let labels: BTreeSet<String> = ticked(labels).map(str::to_owned).collect();
        for name in ticked(names) {
            out.insert(name.to_owned(), labels.clone());
        }
    }
    out
}

fn ticked(cell: &str) -> impl Iterator<Item = &str> {
    cell.split('`').skip(1).step_by(2)
}

/// The label names of one sample line (`name{k="v",…} value`).
fn label_names(series: &str) -> BTreeSet<String> {
    let Some((_, rest)) = series.split_once('{') else { return BTreeSet::new() };
    let mut names = BTreeSet::new();
    let mut chars = rest.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == '}' {
            break;
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        chars.next(); // the opening quote
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => escaped = false,
            }
        }
        if chars.peek() == Some(&',') {
            chars.next();
        }
        names.insert(key);
    }
    names
}

/// Every disagreement between `exposition` (a `/metrics` body) and the table.
pub fn disagreements(exposition: &str) -> Vec<String> {
    let table = documented();
    let mut wrong = BTreeSet::new();
    for line in exposition.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let name = series.split('{').next().unwrap_or_default();
        let mut labels = label_names(series);
        labels.retain(|l| !STRUCTURAL.contains(&l.as_str()));
        if let Some(reserved) = labels.iter().find(|l| RESERVED.contains(&l.as_str())) {
            wrong.insert(format!("{name}: a label named {reserved}"));
        }
        // A histogram's series end in _bucket, _sum, _count; a gauge may be named *_count itself.
        let stripped = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        let family = if table.contains_key(name) { name } else { stripped };
        let row = table.get(family).or_else(|| {
            table
                .iter()
                .find(|(k, _)| k.strip_suffix('*').is_some_and(|p| family.starts_with(p)))
                .map(|(_, v)| v)
        });
        match row {
            None => {
                wrong.insert(format!("{family}: not in docs/observability.md's table"));
            }
            Some(want) if *want != labels => {
                wrong.insert(format!("{family}: labels {labels:?}, the table says {want:?}"));
            }
            Some(_) => {}
        }
    }
    wrong.into_iter().collect()
}
