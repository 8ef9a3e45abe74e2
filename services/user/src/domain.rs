//! Users and their rules. Knows nothing of protobuf: `grpc.rs` converts.

use shopmesh::mesh::validation::{self, Violations};

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// UUIDv7.
    pub id: String,
    /// Lower-cased email, unique.
    pub email: String,
    /// The name shown to people.
    pub display_name: String,
    /// Only active users may order.
    pub active: bool,
    /// The idempotency key the user was created with.
    pub request_id: Option<String>,
    /// Creation time, epoch milliseconds.
    pub create_time_ms: i64,
    /// Last change, epoch milliseconds.
    pub update_time_ms: i64,
}

/// A validated CreateUser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// Lower-cased email.
    pub email: String,
    /// Trimmed display name.
    pub display_name: String,
    /// Idempotency key, if the caller sent one.
    pub request_id: Option<String>,
}

impl NewUser {
    /// Validates a CreateUser's fields, reporting every bad one.
    pub fn parse(email: &str, display_name: &str, request_id: &str) -> Result<Self, Violations> {
        let mut v = Violations::new();
        let email = check_email(&mut v, "email", email);
        let display_name = check_display_name(&mut v, "display_name", display_name);
        let request_id = validation::request_id(&mut v, "request_id", request_id, false);
        v.check(Self { email, display_name, request_id })
    }

    /// Whether `user` is what this request would create: a replay of the same request.
    pub fn matches(&self, user: &User) -> bool {
        self.email == user.email && self.display_name == user.display_name
    }
}

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 100;

fn check_email(v: &mut Violations, field: &str, email: &str) -> String {
    let email = email.trim().to_lowercase();
    let problem = if email.is_empty() {
        Some("is required")
    } else if email.len() > 254 {
        Some("must be at most 254 characters")
    } else if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must not contain spaces or control characters")
    } else {
        match email.split_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && local.len() <= 64
                    && !domain.contains('@')
                    && domain.contains('.')
                    && domain.split('.').all(|label| !label.is_empty()) =>
            {
                None
            }
            _ => Some("must be an address like name@example.com"),
        }
    };
    if let Some(p) = problem {
        v.add(field, p);
    }
    email
}

fn check_display_name(v: &mut Violations, field: &str, name: &str) -> String {
    let name = name.trim();
    if name.is_empty() {
        v.add(field, "is required");
    } else if name.chars().count() > MAX_DISPLAY_NAME {
        v.add(field, format!("must be at most {MAX_DISPLAY_NAME} characters"));
    } else if name.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
    }
    name.to_owned()
}

/// A validated UpdateUser: which fields change, and to what.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserPatch {
    /// New display name, if it changes.
    pub display_name: Option<String>,
    /// New active flag, if it changes.
    pub active: Option<bool>,
}

impl UserPatch {
    /// Validates an UpdateUser (AIP-134): `paths` is the update mask; an empty mask means the
    /// fields holding non-default values; `*` means every mutable field. Field names in
    /// violations are prefixed with `user.` as in the request.
    pub fn parse(
        id: &str,
        paths: &[String],
        display_name: &str,
        active: bool,
    ) -> Result<(String, Self), Violations> {
        let mut v = Violations::new();
        validation::id(&mut v, "user.id", id);
        let mut patch = Self::default();
        if paths.is_empty() {
            if !display_name.is_empty() {
                patch.display_name = Some(display_name.to_owned());
            }
            if active {
                patch.active = Some(true);
            }
        }
        for path in paths {
            match path.as_str() {
                "display_name" => patch.display_name = Some(display_name.to_owned()),
                "active" => patch.active = Some(active),
                "*" => {
                    patch.display_name = Some(display_name.to_owned());
                    patch.active = Some(active);
                }
                "id" | "email" | "create_time" | "update_time" => {
                    v.add("update_mask", format!("{path:?} cannot be changed"));
                }
                _ => v.add("update_mask", format!("{path:?} is not a field of User")),
            }
        }
        if let Some(name) = &patch.display_name {
            patch.display_name = Some(check_display_name(&mut v, "user.display_name", name));
        }
        if patch.display_name.is_none() && patch.active.is_none() && v.is_empty() {
            v.add("update_mask", "names no field to update");
        }
        v.check((id.to_owned(), patch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        let u = NewUser::parse("  Ada@Example.COM ", "Ada", "").expect("valid");
        assert_eq!(u.email, "ada@example.com");
        for bad in ["", "ada", "ada@", "@example.com", "a@b", "a b@c.d", "a@b@c.d", "a@.com"] {
            let err = NewUser::parse(bad, "Ada", "").expect_err(bad);
            assert!(err.has("email"), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(NewUser::parse(&long, "Ada", "").expect_err("long").has("email"));
    }

    #[test]
    fn every_bad_field_is_reported() {
        let err = NewUser::parse("", " ", "no spaces allowed").expect_err("invalid");
        assert!(err.has("email") && err.has("display_name") && err.has("request_id"));
        let err = NewUser::parse("a@b.co", &"x".repeat(101), "").expect_err("long name");
        assert!(err.has("display_name"));
        assert!(NewUser::parse("a@b.co", &"é".repeat(100), "").is_ok(), "limit counts characters");
    }

    #[test]
    fn update_masks() {
        let id = shopmesh::mesh::ids::new_id();
        let (_, p) = UserPatch::parse(&id, &["active".into()], "", false).expect("valid");
        assert_eq!(p, UserPatch { display_name: None, active: Some(false) });

        let (_, p) = UserPatch::parse(&id, &[], "Grace", false).expect("implied mask");
        assert_eq!(p, UserPatch { display_name: Some("Grace".into()), active: None });

        let (_, p) = UserPatch::parse(&id, &["*".into()], "Grace", true).expect("wildcard");
        assert_eq!(p, UserPatch { display_name: Some("Grace".into()), active: Some(true) });

        assert!(
            UserPatch::parse(&id, &["email".into()], "", false).expect_err("immutable").has("update_mask")
        );
        assert!(UserPatch::parse(&id, &["nope".into()], "", false).expect_err("unknown").has("update_mask"));
        assert!(UserPatch::parse(&id, &[], "", false).expect_err("empty").has("update_mask"));
        assert!(
            UserPatch::parse(&id, &["display_name".into()], "", false)
                .expect_err("blank")
                .has("user.display_name")
        );
        assert!(UserPatch::parse("bad", &["active".into()], "", true).expect_err("bad id").has("user.id"));
    }
}
