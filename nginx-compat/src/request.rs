//! What the host hands in for a request ([`Request`]), what it gets back
//! ([`AccessOutcome`], [`RequestCtx`]), and the per-request state the `ngx`
//! API reads and writes while a chunk runs for that request.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use mlua::Table;

use crate::uri::{self, UriError};

/// A request as the edge sees it after parsing, before the access phase.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The normalised path, without the query string (`ngx.var.uri`, as
    /// nginx's `$uri`; see [`uri::normalize`]).
    pub uri: String,
    /// The path as received, when it differs from `uri` (used by
    /// `ngx.var.request_uri`).
    pub raw_path: Option<String>,
    /// The query string without `?` (`ngx.var.args`), may be empty.
    pub args: String,
    /// Request headers in arrival order (names in any case).
    pub headers: Vec<(String, String)>,
    /// The client address (`ngx.var.remote_addr`, `binary_remote_addr`).
    pub remote_addr: IpAddr,
    /// `http` or `https`.
    pub scheme: String,
    /// The host name (`ngx.var.host`), without port.
    pub host: String,
    /// The port the request arrived on.
    pub server_port: u16,
    /// Extra variables set by the host (e.g. a verified user id), exposed as
    /// `ngx.var.<name>`; scripts may add to them with `ngx.var.x = ...`.
    pub vars: HashMap<String, String>,
    /// The request body the host has read, if any: what
    /// `ngx.req.get_body_data()` returns after `ngx.req.read_body()`.
    pub body: Option<Bytes>,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            method: "GET".into(),
            uri: "/".into(),
            raw_path: None,
            args: String::new(),
            headers: Vec::new(),
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            scheme: "http".into(),
            host: "localhost".into(),
            server_port: 80,
            vars: HashMap::new(),
            body: None,
        }
    }
}

impl Request {
    /// A request for `method` and `target` (path with optional `?query`).
    /// The path is normalised for `ngx.var.uri`; a path nginx would refuse
    /// (see [`Request::parse`]) is kept as it is.
    pub fn new(method: &str, target: &str) -> Self {
        Self::parse(method, target).unwrap_or_else(|_| {
            let (path, args) = target.split_once('?').unwrap_or((target, ""));
            Self {
                method: method.to_owned(),
                uri: path.to_owned(),
                args: args.to_owned(),
                ..Self::default()
            }
        })
    }

    /// Like [`Request::new`], but fails where nginx answers `400`: a path
    /// with an invalid or NUL escape, or climbing above the root.
    pub fn parse(method: &str, target: &str) -> Result<Self, UriError> {
        let (path, args) = target.split_once('?').unwrap_or((target, ""));
        let uri = uri::normalize(path)?;
        let raw_path = (uri != path).then(|| path.to_owned());
        // Spelled out rather than `..Self::default()`, whose method and
        // uri strings would be allocated only to be dropped.
        Ok(Self {
            method: method.to_owned(),
            uri,
            raw_path,
            args: args.to_owned(),
            headers: Vec::new(),
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            scheme: "http".into(),
            host: "localhost".into(),
            server_port: 80,
            vars: HashMap::new(),
            body: None,
        })
    }

    /// Sets the request body (`ngx.req.get_body_data`).
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets a host variable (`ngx.var.<name>`).
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_owned(), value.to_owned());
        self
    }

    /// Sets the client address.
    pub fn remote(mut self, addr: IpAddr) -> Self {
        self.remote_addr = addr;
        self
    }

    /// `ngx.var.request_uri`: the path as received and the query string.
    pub fn request_uri(&self) -> String {
        let path = self.raw_path.as_deref().unwrap_or(&self.uri);
        if self.args.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", self.args)
        }
    }

    /// The first value of a header, by case-insensitive name where `_` also
    /// matches `-` (as nginx's `$http_*` variables do).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| header_name_eq(n, name))
            .map(|(_, v)| v.as_str())
    }
}

/// Header-name equality ignoring ASCII case and treating `_` as `-`.
pub(crate) fn header_name_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let norm = |c: u8| {
                if c == b'_' {
                    b'-'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            norm(x) == norm(y)
        })
}

/// What the access phase decided.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessOutcome {
    /// Go on with the request (forward it upstream).
    Continue {
        /// Request headers set by `ngx.req.set_header`, to apply upstream.
        set_headers: Vec<(String, String)>,
        /// Request headers removed by `ngx.req.clear_header`.
        cleared_headers: Vec<String>,
        /// Response headers set with `ngx.header[...]`, to add downstream.
        response_headers: Vec<(String, String)>,
    },
    /// Answer the client now, without forwarding. An empty body means the
    /// host should render its own page for `status`.
    Respond {
        /// The HTTP status.
        status: u16,
        /// Response headers set with `ngx.header[...]` (and `Location` from
        /// `ngx.redirect`).
        headers: Vec<(String, String)>,
        /// What `ngx.say` / `ngx.print` wrote.
        body: Vec<u8>,
    },
}

/// The phase a chunk runs in (`ngx.get_phase()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Access,
    Log,
}

impl Phase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Access => "access",
            Phase::Log => "log",
        }
    }
}

/// The per-request state the `ngx` API works on.
#[derive(Debug)]
pub(crate) struct ReqState {
    pub(crate) req: Request,
    pub(crate) phase: Phase,
    /// Cached `ngx.now()` in seconds since the epoch.
    pub(crate) now: f64,
    /// When the request started, seconds since the epoch.
    pub(crate) start: f64,
    /// `$request_time` given for the log phase.
    pub(crate) request_time: Option<f64>,
    pub(crate) ctx: Option<Table>,
    pub(crate) exit: Option<i64>,
    pub(crate) status: Option<u16>,
    pub(crate) resp_headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) body_started: bool,
    pub(crate) set_headers: Vec<(String, String)>,
    pub(crate) cleared_headers: Vec<String>,
    /// `ngx.req.read_body()` was called (and the body not discarded).
    pub(crate) body_read: bool,
}

impl ReqState {
    pub(crate) fn new(req: Request, now: f64) -> Self {
        Self {
            req,
            phase: Phase::Access,
            now,
            start: now,
            request_time: None,
            ctx: None,
            exit: None,
            status: None,
            resp_headers: Vec::new(),
            body: Vec::new(),
            body_started: false,
            set_headers: Vec::new(),
            cleared_headers: Vec::new(),
            body_read: false,
        }
    }
}

/// A request's Lua-side state between phases: `ngx.ctx`, the request (with
/// headers and variables as the access phase left them) and the response
/// status. The host keeps it from `run_access` to `run_log`, on the same VM.
#[derive(Debug)]
pub struct RequestCtx {
    pub(crate) state: Box<ReqState>,
}

impl RequestCtx {
    /// The request as the scripts left it.
    pub fn request(&self) -> &Request {
        &self.state.req
    }
}
