//! nginx's `$uri`: the request path percent-decoded, with `//` merged and
//! `.` / `..` segments resolved, as `ngx_http_parse_complex_uri` does with
//! `merge_slashes on` (the default).
//!
//! Decoding comes first, so `%2e%2e` is a `..` segment and `%2F` a
//! separator, as in nginx. What nginx answers `400` for is an error here:
//! a `..` that climbs above the root, an invalid percent escape, and an
//! escaped NUL (`%00`). One difference: `$uri` is bytes in nginx, a
//! `String` here, so a path that decodes to invalid UTF-8 is refused too.
//! This module only computes; the host decides how to answer an error.

use std::fmt;

/// Why a path has no `$uri` (nginx answers these `400 Bad Request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%00`, or a raw NUL byte.
    Nul,
    /// A `..` segment above the root (`/a/../..`).
    AboveRoot,
    /// The decoded path is not UTF-8.
    NotUtf8,
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UriError::NotAbsolute => "the path does not start with /",
            UriError::BadEscape => "invalid percent-encoding in the path",
            UriError::Nul => "NUL byte in the path",
            UriError::AboveRoot => "the path climbs above the root",
            UriError::NotUtf8 => "the decoded path is not UTF-8",
        })
    }
}

impl std::error::Error for UriError {}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The normalised `$uri` of `path` (a request path without its query
/// string): `/a/./b/../c%20d//e` → `/a/c d/e`.
pub fn normalize(path: &str) -> Result<String, UriError> {
    let raw = path.as_bytes();
    if raw.first() != Some(&b'/') {
        return Err(UriError::NotAbsolute);
    }
    // The common case: nothing to decode or resolve, one copy.
    if !raw.iter().any(|&b| b == b'%' || b == b'.' || b == 0) && !raw.windows(2).any(|w| w == b"//")
    {
        return Ok(path.to_owned());
    }
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(UriError::BadEscape);
            };
            decoded.push(hi << 4 | lo);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    if decoded.contains(&0) {
        return Err(UriError::Nul);
    }
    // Resolve segments; `kept` holds the start offsets of kept segments in
    // `out`, so `..` can drop the last one.
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len());
    let mut kept: Vec<usize> = Vec::new();
    let segments: Vec<&[u8]> = decoded[1..].split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (n, seg) in segments.into_iter().enumerate() {
        match seg {
            // `//` merged; a final empty segment is a trailing slash.
            b"" => trailing_slash = n == last,
            b"." => trailing_slash = n == last,
            b".." => {
                let start = kept.pop().ok_or(UriError::AboveRoot)?;
                out.truncate(start);
                trailing_slash = n == last;
            }
            seg => {
                kept.push(out.len());
                out.push(b'/');
                out.extend_from_slice(seg);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    String::from_utf8(out).map_err(|_| UriError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        normalize(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    #[test]
    fn plain_paths_are_unchanged() {
        for p in ["/", "/api/rounds/1/items/7/buy", "/a/b/", "/a-b_c~d"] {
            assert_eq!(ok(p), p);
        }
    }

    #[test]
    fn nginx_rules() {
        assert_eq!(ok("/a/./b/../c%20d//e"), "/a/c d/e");
        assert_eq!(ok("//a///b"), "/a/b");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/b/."), "/a/b/");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/."), "/");
        assert_eq!(ok("/a/b//"), "/a/b/");
        assert_eq!(ok("/a/..b/c"), "/a/..b/c");
        assert_eq!(ok("/a/.b"), "/a/.b");
        assert_eq!(ok("/a/b.../c"), "/a/b.../c");
        // Decoding happens before resolution, as in nginx.
        assert_eq!(ok("/a/%2e%2E/b"), "/b");
        assert_eq!(ok("/a%2Fb"), "/a/b");
        assert_eq!(ok("/a/%2e/b"), "/a/b");
        // Only one decoding pass: %2525 is "%25", not "%".
        assert_eq!(ok("/a%2525"), "/a%25");
        // `+` is not a space in a path.
        assert_eq!(ok("/a+b"), "/a+b");
        assert_eq!(ok("/%E4%BA%AC"), "/京");
        assert_eq!(
            ok("/api/rounds/1/items/x/../7/buy"),
            "/api/rounds/1/items/7/buy"
        );
    }

    #[test]
    fn what_nginx_answers_400() {
        assert_eq!(normalize("/.."), Err(UriError::AboveRoot));
        assert_eq!(normalize("/a/../.."), Err(UriError::AboveRoot));
        assert_eq!(normalize("/a/../../b"), Err(UriError::AboveRoot));
        assert_eq!(normalize("/%2e%2e/etc"), Err(UriError::AboveRoot));
        assert_eq!(normalize("/a%00b"), Err(UriError::Nul));
        assert_eq!(normalize("/a\0b"), Err(UriError::Nul));
        assert_eq!(normalize("/a%zz"), Err(UriError::BadEscape));
        assert_eq!(normalize("/a%2"), Err(UriError::BadEscape));
        assert_eq!(normalize("/a%"), Err(UriError::BadEscape));
        assert_eq!(normalize("a/b"), Err(UriError::NotAbsolute));
        assert_eq!(normalize(""), Err(UriError::NotAbsolute));
        assert_eq!(normalize("/%ff"), Err(UriError::NotUtf8));
    }
}
