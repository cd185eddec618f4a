//! What the host hands in for a request ([`Request`]), what it gets back
//! ([`AccessOutcome`], [`RequestCtx`]), and the per-request state the `ngx`
//! API reads and writes while a chunk runs for that request.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use mlua::Table;

/// A request as the edge sees it after parsing, before the access phase.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query string (`ngx.var.uri`).
    pub uri: String,
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
}

impl Default for Request {
    fn default() -> Self {
        Self {
            method: "GET".into(),
            uri: "/".into(),
            args: String::new(),
            headers: Vec::new(),
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            scheme: "http".into(),
            host: "localhost".into(),
            server_port: 80,
            vars: HashMap::new(),
        }
    }
}

impl Request {
    /// A request for `method` and `target` (path with optional `?query`).
    pub fn new(method: &str, target: &str) -> Self {
        let (uri, args) = target.split_once('?').unwrap_or((target, ""));
        Self {
            method: method.to_owned(),
            uri: uri.to_owned(),
            args: args.to_owned(),
            ..Self::default()
        }
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

    /// `ngx.var.request_uri`: the path and the query string.
    pub fn request_uri(&self) -> String {
        if self.args.is_empty() {
            self.uri.clone()
        } else {
            format!("{}?{}", self.uri, self.args)
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
