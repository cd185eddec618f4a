//! The sale pages and assets, served from memory: `/` → `index.html`,
//! `/sale/...` (a directory → its `index.html`), `/assets/...`.
//!
//! Files are read into a moka cache that forgets them after
//! `pages.cache_ttl_ms`, so a re-rendered page is served without a restart.
//! Each entry carries its `ETag` and a gzip copy (or the `.gz` / `.br` file
//! rendered beside it). A request path never leaves the pages directory:
//! `..`, `.`, encoded slashes and backslashes, NUL, and symlinks that
//! resolve outside are refused.
//!
//! This module does not write responses; it returns a [`StaticReply`] the
//! proxy writes.

use std::{
    hash::Hasher,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;

/// One file in memory.
#[derive(Debug)]
pub struct Entry {
    pub body: Bytes,
    pub gzip: Option<Bytes>,
    pub brotli: Option<Bytes>,
    pub etag: String,
    pub content_type: &'static str,
    pub cache_control: String,
}

/// What the proxy should answer.
#[derive(Debug)]
pub enum StaticReply {
    /// 200 with this body and encoding (`None`: identity).
    Ok {
        entry: Arc<Entry>,
        encoding: Option<&'static str>,
    },
    /// 304: the client's copy is current.
    NotModified(Arc<Entry>),
    /// The path is not a page (404).
    NotFound,
    /// The path tries to escape the directory or is malformed (400).
    Refused,
}

/// Serves one pages directory.
#[derive(Clone)]
pub struct StaticFiles {
    root: PathBuf,
    cache: moka::sync::Cache<PathBuf, Arc<Entry>>,
    max_bytes: u64,
    asset_max_age: u64,
}

impl StaticFiles {
    pub fn new(root: &Path, ttl: Duration, max_bytes: u64, asset_max_age: u64) -> Self {
        // Canonical once, so a symlinked pages dir itself is fine; files
        // under it must stay under it.
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        Self {
            root,
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ttl)
                .build(),
            max_bytes,
            asset_max_age,
        }
    }

    /// Whether the edge serves `path` as a static file (else it is an API
    /// path or unknown).
    pub fn handles(path: &str) -> bool {
        path == "/"
            || path == "/index.html"
            || path.starts_with("/sale/")
            || path == "/sale"
            || path.starts_with("/assets/")
            || path == "/favicon.ico"
    }

    /// Answers `raw_path` (as sent, still percent-encoded) for a client
    /// with these `If-None-Match` and `Accept-Encoding` headers.
    pub fn serve(
        &self,
        raw_path: &str,
        if_none_match: Option<&str>,
        accept_encoding: Option<&str>,
    ) -> StaticReply {
        let Some(rel) = safe_relative(raw_path) else {
            return StaticReply::Refused;
        };
        let Some(entry) = self.load(&rel) else {
            return StaticReply::NotFound;
        };
        if let Some(inm) = if_none_match
            && etag_matches(inm, &entry.etag)
        {
            return StaticReply::NotModified(entry);
        }
        let accept = accept_encoding.unwrap_or("");
        let encoding = if entry.brotli.is_some() && accepts(accept, "br") {
            Some("br")
        } else if entry.gzip.is_some() && accepts(accept, "gzip") {
            Some("gzip")
        } else {
            None
        };
        StaticReply::Ok { entry, encoding }
    }

    fn load(&self, rel: &Path) -> Option<Arc<Entry>> {
        if let Some(e) = self.cache.get(rel) {
            return Some(e);
        }
        let mut path = self.root.join(rel);
        if path.is_dir() {
            path.push("index.html");
        }
        // Symlinks are resolved and must stay inside the root.
        let real = path.canonicalize().ok()?;
        if !real.starts_with(&self.root) || !real.is_file() {
            return None;
        }
        let meta = std::fs::metadata(&real).ok()?;
        if meta.len() > self.max_bytes {
            tracing::warn!(path = %real.display(), "page larger than pages.max_file_bytes; not served");
            return None;
        }
        let body = Bytes::from(std::fs::read(&real).ok()?);
        let content_type = content_type(&real);
        let sibling = |ext: &str| -> Option<Bytes> {
            let mut p = real.clone().into_os_string();
            p.push(ext);
            let p = PathBuf::from(p);
            let r = p.canonicalize().ok()?;
            r.starts_with(&self.root)
                .then(|| std::fs::read(&r).ok().map(Bytes::from))
                .flatten()
        };
        let compressible = content_type.starts_with("text/")
            || content_type.starts_with("application/javascript")
            || content_type.starts_with("application/json")
            || content_type.starts_with("image/svg");
        let gzip = sibling(".gz").or_else(|| {
            (compressible && body.len() >= 256)
                .then(|| gzip(&body))
                .flatten()
        });
        let brotli = sibling(".br");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write(&body);
        let etag = format!("\"{:x}-{:016x}\"", body.len(), h.finish());
        let cache_control = if content_type.starts_with("text/html") {
            "no-cache".to_owned()
        } else {
            format!("public, max-age={}", self.asset_max_age)
        };
        let entry = Arc::new(Entry {
            body,
            gzip,
            brotli,
            etag,
            content_type,
            cache_control,
        });
        self.cache.insert(rel.to_path_buf(), entry.clone());
        Some(entry)
    }
}

fn gzip(body: &[u8]) -> Option<Bytes> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(body).ok()?;
    let out = enc.finish().ok()?;
    (out.len() < body.len()).then(|| Bytes::from(out))
}

/// The request path as a relative path under the root, or `None` if it is
/// malformed or tries to leave the root.
pub fn safe_relative(raw_path: &str) -> Option<PathBuf> {
    let path = raw_path.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return None;
    }
    // Encoded separators and NUL are refused before decoding, so a decoded
    // `/` can never form a `..` segment.
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%00")
        || path.contains('\\')
    {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    let mut rel = PathBuf::new();
    for seg in decoded.split('/') {
        match seg {
            "" => continue,
            "." | ".." => return None,
            s if s.contains(['\\', '\0']) || s.starts_with('.') => return None,
            s => rel.push(s),
        }
    }
    if rel.as_os_str().is_empty() {
        rel.push("index.html");
    }
    Some(rel)
}

fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t == etag || t.strip_prefix("W/") == Some(etag)
    })
}

fn accepts(header: &str, coding: &str) -> bool {
    header.split(',').any(|part| {
        let mut it = part.split(';');
        let name = it.next().unwrap_or("").trim();
        let q_zero = it.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .is_some_and(|q| q.trim().parse::<f32>().map(|q| q <= 0.0).unwrap_or(false))
        });
        name.eq_ignore_ascii_case(coding) && !q_zero
    })
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "application/javascript; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused() {
        for p in [
            "/../etc/passwd",
            "/assets/../../x",
            "/assets/%2e%2e/%2e%2e/etc/passwd",
            "/assets/..%2fx",
            "/assets/%2F..",
            "/assets/a%5c..",
            "/assets/a\\b",
            "/assets/%00",
            "/assets/.hidden",
        ] {
            assert_eq!(safe_relative(p), None, "{p}");
        }
        assert_eq!(safe_relative("/"), Some(PathBuf::from("index.html")));
        assert_eq!(safe_relative("/sale/1/2/"), Some(PathBuf::from("sale/1/2")));
        assert_eq!(
            safe_relative("/assets/sale%20x.js?v=1"),
            Some(PathBuf::from("assets/sale x.js"))
        );
    }

    #[test]
    fn encodings_and_etags() {
        assert!(accepts("gzip, deflate, br", "gzip"));
        assert!(!accepts("gzip;q=0, br", "gzip"));
        assert!(!accepts("deflate", "gzip"));
        assert!(etag_matches("W/\"a\", \"b\"", "\"a\""));
        assert!(!etag_matches("\"c\"", "\"a\""));
    }
}
