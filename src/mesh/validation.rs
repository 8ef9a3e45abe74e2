//! Field-by-field validation results that domain code builds without knowing protobuf, and the
//! checks every service of any mesh shares (ids, idempotency keys, pages). The shop's own rules
//! (SKUs, currency codes) live with the services, in `services/shop`.

use std::fmt;

/// One invalid field: its path in the request (`line_items[2].quantity`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field's path in the request message, as `google.rpc.BadRequest` expects.
    pub field: String,
    /// What is wrong with it, in words a caller can act on.
    pub description: String,
}

/// Most violations one request keeps; further ones are only counted. Hostile input (a mask of
/// a million unknown paths, a hundred wrong order lines) must not grow the answer without bound:
/// together with [`MAX_VIOLATION_TEXT`] this keeps an INVALID_ARGUMENT within the 8 KiB of
/// metadata every gRPC client accepts (see [`crate::mesh::status::MAX_METADATA_BYTES`]).
pub const MAX_LISTED_VIOLATIONS: usize = 16;

/// Longest field path or description kept, in bytes; longer ones (they may quote the caller's
/// input) are cut at a character boundary and end in `…`.
pub const MAX_VIOLATION_TEXT: usize = 128;

/// Every problem found in one request; reported together so a caller can fix all at once, up
/// to [`MAX_LISTED_VIOLATIONS`] of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations {
    listed: Vec<Violation>,
    omitted: usize,
}

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is invalid (only counted once [`MAX_LISTED_VIOLATIONS`] are kept).
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.listed.len() < MAX_LISTED_VIOLATIONS {
            self.listed.push(Violation {
                field: clip(field.into(), MAX_VIOLATION_TEXT),
                description: clip(description.into(), MAX_VIOLATION_TEXT),
            });
        } else {
            self.omitted += 1;
        }
    }

    /// Whether nothing was found wrong.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// The violations kept, in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = &Violation> {
        self.listed.iter()
    }

    /// How many violations were found beyond the [`MAX_LISTED_VIOLATIONS`] kept.
    pub fn omitted(&self) -> usize {
        self.omitted
    }

    /// `Ok(value)` when nothing was found wrong, else these violations.
    pub fn check<T>(self, value: T) -> Result<T, Self> {
        if self.is_empty() { Ok(value) } else { Err(self) }
    }

    /// Whether `field` is among the violations kept (for tests and callers matching on a field).
    pub fn has(&self, field: &str) -> bool {
        self.listed.iter().any(|v| v.field == field)
    }
}

/// `s` cut to at most `max` bytes at a character boundary, ending in `…` when cut.
pub fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.listed.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        if self.omitted > 0 {
            write!(f, "; and {} more", self.omitted)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

/// Longest idempotency key accepted; keys are stored and indexed.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Checks an idempotency key (AIP-155): 1 to 64 of `[A-Za-z0-9-_.:]`. `required` makes an empty
/// key a violation; otherwise empty means "no key". Returns the key when there is a valid one.
pub fn request_id(v: &mut Violations, field: &str, value: &str, required: bool) -> Option<String> {
    if value.is_empty() {
        if required {
            v.add(field, "is required");
        }
        return None;
    }
    if value.len() > MAX_REQUEST_ID_LEN {
        v.add(field, format!("must be at most {MAX_REQUEST_ID_LEN} characters"));
        return None;
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
        v.add(field, "may contain only letters, digits and - _ . :");
        return None;
    }
    Some(value.to_owned())
}

/// Checks that `value` is an id this mesh issued; NOT_FOUND is for well-formed ids only.
pub fn id(v: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if !crate::mesh::ids::is_id(value) {
        v.add(field, "must be a UUID in canonical lower-case form");
    }
}

/// Checks a page size; returns the effective one (see [`crate::mesh::ids::page_size`]).
pub fn page_size(v: &mut Violations, field: &str, value: i32) -> u32 {
    crate::mesh::ids::page_size(value).unwrap_or_else(|| {
        v.add(field, "must not be negative");
        0
    })
}

/// Checks a page token; returns the id to continue after, if any.
pub fn page_token(v: &mut Violations, field: &str, value: &str) -> Option<String> {
    match crate::mesh::ids::parse_page_token(value) {
        Some(after) => after.map(str::to_owned),
        None => {
            v.add(field, "is not a token returned by this service");
            None
        }
    }
}

/// A validated page request of a List method (AIP-158).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The most items to return.
    pub size: u32,
    /// The id to continue after, from the page token; `None` for the first page.
    pub after: Option<String>,
}

impl Page {
    /// How many rows a store fetches for this page: one more than its size, which tells
    /// whether another page follows without a second query.
    pub fn fetch(&self) -> u32 {
        self.size.saturating_add(1)
    }

    /// Cuts `rows` (fetched in key order, [`Page::fetch`] of them at most) to this page; the
    /// next page token is the key of the last row kept, empty on the last page.
    pub fn split<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> &str) -> Paged<T> {
        let size = self.size as usize;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last().map(|row| key(row).to_owned()).unwrap_or_default()
        } else {
            String::new()
        };
        Paged { items: rows, next_page_token }
    }
}

/// One page of a List method's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paged<T> {
    /// The items, in key order.
    pub items: Vec<T>,
    /// The token of the next page; empty on the last page.
    pub next_page_token: String,
}

/// Checks a List method's `page_size` and `page_token` fields.
pub fn page(v: &mut Violations, size: i32, token: &str) -> Page {
    Page { size: page_size(v, "page_size", size), after: page_token(v, "page_token", token) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_cut_and_continue_after_their_last_key() {
        let page = Page { size: 2, after: None };
        assert_eq!(page.fetch(), 3);
        let full = page.split(vec!["a", "b", "c"], |s| s);
        assert_eq!(full, Paged { items: vec!["a", "b"], next_page_token: "b".into() });
        let last = page.split(vec!["a", "b"], |s| s);
        assert_eq!(last, Paged { items: vec!["a", "b"], next_page_token: String::new() });
        let empty = page.split(Vec::<&str>::new(), |s| s);
        assert!(empty.items.is_empty() && empty.next_page_token.is_empty());
    }

    #[test]
    fn request_ids() {
        let mut v = Violations::new();
        assert_eq!(request_id(&mut v, "request_id", "", false), None);
        assert!(v.is_empty());
        assert_eq!(request_id(&mut v, "request_id", "", true), None);
        assert!(v.has("request_id"));

        let mut v = Violations::new();
        assert_eq!(request_id(&mut v, "r", "abc-1.2:3_", true).as_deref(), Some("abc-1.2:3_"));
        assert_eq!(request_id(&mut v, "r", "a b", true), None);
        assert_eq!(request_id(&mut v, "r", &"x".repeat(65), true), None);
        assert_eq!(v.iter().count(), 2);
    }

    #[test]
    fn display_lists_every_field() {
        let mut v = Violations::new();
        v.add("a", "is required");
        v.add("b.c", "is too long");
        assert_eq!(v.to_string(), "a: is required; b.c: is too long");
        assert_eq!(v.clone().check(1), Err(v));
        assert_eq!(Violations::new().check(1), Ok(1));
    }

    #[test]
    fn hostile_input_cannot_grow_violations_without_bound() {
        let mut v = Violations::new();
        let huge = "é".repeat(10_000);
        for i in 0..1000 {
            v.add(format!("update_mask[{i}]{huge}"), format!("{huge:?} is not a field"));
        }
        assert_eq!(v.iter().count(), MAX_LISTED_VIOLATIONS);
        assert_eq!(v.omitted(), 1000 - MAX_LISTED_VIOLATIONS);
        for kept in v.iter() {
            assert!(kept.field.len() <= MAX_VIOLATION_TEXT && kept.field.ends_with('…'), "{}", kept.field);
            assert!(kept.description.len() <= MAX_VIOLATION_TEXT, "{}", kept.description);
        }
        assert!(v.to_string().ends_with(&format!("; and {} more", 1000 - MAX_LISTED_VIOLATIONS)));
        assert_eq!(clip("short".into(), MAX_VIOLATION_TEXT), "short");
        assert_eq!(clip("abcdef".into(), 5), "ab…");
        assert_eq!(clip("éééé".into(), 6), "é…", "cut at a character boundary");
    }
}
