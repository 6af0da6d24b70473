//! The `Origin` allowlist: exact origins and glob patterns, compiled once.
//!
//! An origin is `scheme://host[:port]` (RFC 6454), compared in lowercase. A header that is not
//! of that shape (a path, a query, spaces) is never matched, so a pattern such as
//! `https://*.example.com` cannot be satisfied by `https://evil.test/x.example.com`.
//! `null` (sandboxed frames, `file:` pages) matches only an entry `null`.

use std::collections::HashSet;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// The compiled allowlist.
#[derive(Debug, Clone)]
pub struct OriginMatcher {
    /// No entries: every origin is allowed.
    any: bool,
    exact: HashSet<String>,
    patterns: GlobSet,
}

impl Default for OriginMatcher {
    fn default() -> Self {
        OriginMatcher { any: true, exact: HashSet::new(), patterns: GlobSet::empty() }
    }
}

impl OriginMatcher {
    /// Compile the list; an entry with `*` (any run of characters) or `?` (one character) is
    /// a pattern, any other an exact origin (brackets are literal: IPv6 hosts). An invalid pattern or a malformed exact origin is an error naming it.
    pub fn new(list: &[String]) -> Result<Self, String> {
        if list.is_empty() {
            return Ok(OriginMatcher::default());
        }
        let mut exact = HashSet::new();
        let mut set = GlobSetBuilder::new();
        for entry in list {
            let e = entry.trim().to_ascii_lowercase();
            if e == "*" {
                return Err("auth.origins_allowed: \"*\" allows everything; leave the list \
                            empty instead"
                    .into());
            }
            if e.contains(['*', '?']) {
                let escaped = e.replace('[', "\\[").replace(']', "\\]").replace('{', "\\{");
                let glob = GlobBuilder::new(&escaped)
                    .backslash_escape(true)
                    .literal_separator(false)
                    .build()
                    .map_err(|err| format!("auth.origins_allowed: bad pattern {entry:?}: {err}"))?;
                set.add(glob);
            } else if e == "null" || is_origin(&e) {
                exact.insert(e);
            } else {
                return Err(format!(
                    "auth.origins_allowed: {entry:?} is not an origin (scheme://host[:port])"
                ));
            }
        }
        let patterns =
            set.build().map_err(|e| format!("auth.origins_allowed: bad patterns: {e}"))?;
        Ok(OriginMatcher { any: false, exact, patterns })
    }

    /// Whether an upgrade with this `Origin` header may proceed. No header: allowed (not a
    /// browser; see [`super::AuthConfig::origins_allowed`]).
    pub fn allows(&self, origin: Option<&str>) -> bool {
        if self.any {
            return true;
        }
        let Some(origin) = origin else { return true };
        let o = origin.trim().to_ascii_lowercase();
        if o == "null" {
            return self.exact.contains("null");
        }
        is_origin(&o) && (self.exact.contains(&o) || self.patterns.is_match(&o))
    }
}

/// `scheme://host[:port]` in lowercase: scheme `[a-z][a-z0-9+.-]*`, host a DNS name or IPv4
/// (`[a-z0-9.-]+`) or a bracketed IPv6 literal, port digits.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else { return false };
    let mut sc = scheme.bytes();
    if !sc.next().is_some_and(|b| b.is_ascii_lowercase())
        || !sc.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b))
    {
        return false;
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else { return false };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b":.".contains(&b)) {
            return false;
        }
        match after {
            "" => ("v6", None),
            p => match p.strip_prefix(':') {
                Some(port) => ("v6", Some(port)),
                None => return false,
            },
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-".contains(&b));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(list: &[&str]) -> OriginMatcher {
        OriginMatcher::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn empty_list_allows_everything() {
        assert!(m(&[]).allows(Some("https://anything.test")));
        assert!(m(&[]).allows(None));
    }

    #[test]
    fn exact_and_patterns_case_insensitive() {
        let a = m(&["https://app.example.com", "https://*.example.org", "http://localhost:*"]);
        assert!(a.allows(Some("https://app.example.com")));
        assert!(a.allows(Some("HTTPS://APP.Example.com")));
        assert!(!a.allows(Some("http://app.example.com")));
        assert!(!a.allows(Some("https://app.example.com:8443")));
        assert!(a.allows(Some("https://x.example.org")));
        assert!(a.allows(Some("https://a.b.example.org")));
        assert!(!a.allows(Some("https://example.org")));
        assert!(!a.allows(Some("https://evil.test/x.example.org")));
        assert!(!a.allows(Some("https://evil.test?.example.org")));
        assert!(!a.allows(Some("https://evil example.org")));
        assert!(a.allows(Some("http://localhost:3000")));
        assert!(!a.allows(Some("http://localhost")));
        assert!(!a.allows(Some("null")));
        assert!(a.allows(None), "non-browser clients send no Origin");
        assert!(m(&["null"]).allows(Some("null")));
        assert!(m(&["http://[::1]:8080"]).allows(Some("http://[::1]:8080")));
        assert!(m(&["http://[::1]:*"]).allows(Some("http://[::1]:8080")));
        assert!(!m(&["http://[::1]:*"]).allows(Some("http://1:8080")));
    }

    #[test]
    fn bad_entries_are_errors() {
        for bad in ["*", "example.com", "https://a/b", "https://[", "ht tp://a"] {
            assert!(OriginMatcher::new(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
