//! Token scopes of the REST API (D-58): besides the admin token, tokens that may do less.
//!
//! `registry` is the façade an external device registry uses to keep the hub in step (issue 18):
//! it creates and deletes things and nothing else. `read-only` reads everything and changes
//! nothing. Which routes a scope allows is a pure function of the HTTP method and the matched
//! route ([`allows`]), so the list lives in one place and is tested here.

use std::str::FromStr;

use axum::http::Method;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (the admin token).
    Admin,
    /// Create and delete things.
    Registry,
    /// Every read, no write.
    ReadOnly,
}

impl Scope {
    /// The name used in `--api-token SCOPE:TOKEN` and in refusals.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Registry => "registry",
            Scope::ReadOnly => "read-only",
        }
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "admin" => Ok(Scope::Admin),
            "registry" => Ok(Scope::Registry),
            "read-only" => Ok(Scope::ReadOnly),
            _ => Err(format!("unknown scope {s:?}: admin, registry or read-only")),
        }
    }
}

/// Routes (below `/api/v1`) that read although their method is POST.
const READS_BY_POST: [&str; 1] = ["/things/query"];

/// The `registry` scope's routes: creating things (one or a batch) and deleting one.
const REGISTRY: [(Method, &str); 3] = [
    (Method::POST, "/things"),
    (Method::POST, "/things/batch"),
    (Method::DELETE, "/things/{id}"),
];

/// Whether `scope` may call `method` on the route `matched` (axum's matched path below
/// `/api/v1`, e.g. `/things/{id}`; a leading `/api/v1` is ignored).
pub fn allows(scope: Scope, method: &Method, matched: &str) -> bool {
    let matched = matched.strip_prefix("/api/v1").unwrap_or(matched);
    match scope {
        Scope::Admin => true,
        Scope::ReadOnly => {
            method == Method::GET
                || method == Method::HEAD
                || (method == Method::POST && READS_BY_POST.contains(&matched))
        }
        Scope::Registry => REGISTRY.iter().any(|(m, r)| m == method && *r == matched),
    }
}

/// Parses `--api-token SCOPE:TOKEN`: a known scope, a token of 16 to 256 visible ASCII
/// characters (it travels in a header, and a short one is guessable).
pub fn parse_scoped_token(s: &str) -> Result<(Scope, String), String> {
    let (scope, token) = s
        .split_once(':')
        .ok_or_else(|| "expected SCOPE:TOKEN, e.g. registry:9f2c…".to_owned())?;
    let scope: Scope = scope.parse()?;
    if !(16..=256).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be 16 to 256 visible ASCII characters".into());
    }
    Ok((scope, token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_creates_and_deletes_things_only() {
        let r = Scope::Registry;
        assert!(allows(r, &Method::POST, "/things"));
        assert!(allows(r, &Method::POST, "/things/batch"));
        assert!(allows(r, &Method::DELETE, "/things/{id}"));
        assert!(!allows(r, &Method::GET, "/things"));
        assert!(!allows(r, &Method::PATCH, "/things/{id}"));
        assert!(!allows(r, &Method::DELETE, "/things/{id}/shadows/{name}"));
        assert!(!allows(r, &Method::POST, "/jobs"));
    }

    #[test]
    fn read_only_reads_everything_and_writes_nothing() {
        let r = Scope::ReadOnly;
        assert!(allows(r, &Method::GET, "/things/{id}/shadows/{name}"));
        assert!(allows(r, &Method::POST, "/things/query"));
        assert!(!allows(r, &Method::POST, "/things"));
        assert!(!allows(
            r,
            &Method::PUT,
            "/things/{id}/shadows/{name}/state/desired"
        ));
        assert!(!allows(r, &Method::POST, "/things/{id}/methods/{method}"));
        assert!(!allows(r, &Method::DELETE, "/things/{id}"));
    }

    #[test]
    fn admin_does_everything() {
        assert!(allows(
            Scope::Admin,
            &Method::DELETE,
            "/configurations/{name}"
        ));
    }

    #[test]
    fn scoped_tokens_parse() {
        assert_eq!(
            parse_scoped_token("registry:0123456789abcdef"),
            Ok((Scope::Registry, "0123456789abcdef".into()))
        );
        assert_eq!(
            parse_scoped_token("read-only:0123456789abcdef:x").map(|t| t.0),
            Ok(Scope::ReadOnly)
        );
        for bad in [
            "registry",
            "root:0123456789abcdef",
            "registry:short",
            "registry:0123456789 abcdef",
        ] {
            assert!(parse_scoped_token(bad).is_err(), "{bad}");
        }
    }
}
