//! The one `ProxyHttp` of the edge. Each phase delegates:
//! `request_filter` → [`clock`](crate::clock), [`static_files`], the
//! request body (read whole, up to `lua.max_body_bytes`, for the access
//! phase; Pingora forwards it from its retry buffer), identity, nginx's
//! `$uri`, [`access`](crate::access) (answers early or lets the request
//! pass); `upstream_peer` / `fail_to_connect` → [`upstream`]; the response
//! phases settle permits ([`permits`]) from the backend's permit header (a
//! buy carries its permits in `x-seckill-permit`; the edge strips that
//! header from what clients send and from what they receive); `logging`
//! records metrics and the access log (`http.access_log`), then runs the
//! Lua log phase.
//!
//! While a buy is held by an item's admission window
//! ([`admission`](crate::admission), inside `seckill.permit`), the
//! request's connection is watched: a client that closes it ends the hold,
//! and the request ends with nothing taken, forwarded or answered.
//!
//! Retries: only connect failures are retried (on another backend), so a
//! buy request that reached a backend is never replayed.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bytes::Bytes;
use nginx_compat::{AccessOutcome, Request};
use pingora::{
    http::{RequestHeader, ResponseHeader},
    prelude::*,
    proxy::{FailToProxy, ProxyHttp, Session},
};
use seckill_proto::{
    permit,
    ticket::{self, TicketError},
};
use serde_json::json;

use crate::{
    access::{LogPhase, LuaAccess},
    admission::ClientLink,
    clock,
    identity::{IDENTITY_HEADERS, Identity, ROLE_HEADER, USER_HEADER},
    metrics::Metrics,
    permits::{Effect, Permit, Permits},
    static_files::{StaticFiles, StaticReply},
    tickets::TicketGate,
    upstream::{InFlight, Upstreams},
};

/// Which part of the edge handles a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Static,
    Clock,
    Health,
    Buy,
    Api,
    Admin,
    Unknown,
}

impl Route {
    pub fn of(path: &str) -> Self {
        if path == "/api/time" {
            Route::Clock
        } else if path == "/healthz" {
            Route::Health
        } else if path.starts_with("/api/") {
            if path.ends_with("/buy") && path.starts_with("/api/rounds/") {
                Route::Buy
            } else {
                Route::Api
            }
        } else if path.starts_with("/admin/") || path == "/admin" {
            Route::Admin
        } else if StaticFiles::handles(path) {
            Route::Static
        } else {
            Route::Unknown
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Static => "static",
            Route::Clock => "clock",
            Route::Health => "health",
            Route::Buy => "buy",
            Route::Api => "api",
            Route::Admin => "admin",
            Route::Unknown => "unknown",
        }
    }
}

/// Per-request state across phases.
pub struct Ctx {
    route: Route,
    start: Instant,
    client: Option<IpAddr>,
    user: Option<(String, &'static str)>,
    permits: Vec<Permit>,
    upstream: Option<InFlight>,
    tried: Vec<usize>,
    upstream_start: Option<Instant>,
    upstream_status: Option<u16>,
    set_headers: Vec<(String, String)>,
    cleared_headers: Vec<String>,
    response_headers: Vec<(String, String)>,
    /// Set when the edge answered itself, with the reason for metrics.
    answered: Option<&'static str>,
    reason: Option<String>,
    /// The request body read for the access phase (`None`: no body, or a
    /// route that streams it).
    body: Option<Bytes>,
    /// The request's Lua state for the log phase (only with `lua.log`).
    lua_log: Option<LogPhase>,
}

/// The edge's proxy: every module it delegates to.
pub struct Edge {
    pub static_files: StaticFiles,
    pub identity: Identity,
    pub access: Arc<LuaAccess>,
    pub permits: Option<Permits>,
    pub upstreams: Upstreams,
    pub metrics: Metrics,
    pub expose_admin: bool,
    pub connect_retries: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// `lua.max_body_bytes`: the largest body read for the access phase.
    pub max_body_bytes: usize,
    /// `http.access_log`: one `info` line per request.
    pub access_log: bool,
    /// `[tickets]`: the purchase-ticket check of buys, when enabled.
    pub tickets: Option<TicketGate>,
}

/// A JSON error body in the contract's shape.
pub fn error_body(code: &str, message: &str) -> Bytes {
    Bytes::from(json!({ "error": code, "message": message }).to_string())
}

fn code_for(status: u16) -> &'static str {
    use seckill_proto::errors as e;
    match status {
        400 => e::BAD_REQUEST,
        401 => e::UNAUTHORIZED,
        403 => e::FORBIDDEN,
        404 => e::NOT_FOUND,
        410 => e::SOLD_OUT,
        413 => e::PAYLOAD_TOO_LARGE,
        422 => e::LIMIT_EXCEEDED,
        429 => e::RATE_LIMITED,
        502..=504 => e::UNAVAILABLE,
        _ => e::INTERNAL,
    }
}

/// Reads what is left of a small request body before answering at the
/// edge, so the client's connection can carry its next request (an unread
/// body would force a close). Large or unknown bodies close the connection.
async fn drain_small_body(session: &mut Session) {
    if session.is_body_done() {
        return;
    }
    let small = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n <= 64 * 1024);
    if !small || session.drain_request_body().await.is_err() {
        session.set_keepalive(None);
    }
}

/// Resolves when the client closes its connection during a hold of the
/// admission window (never, if no hold starts). Only a request whose body
/// is read whole is watched: reading past it is then reading the
/// connection itself (Pingora answers a close, or bytes sent after the
/// body, as an error).
async fn watch_client(session: &mut Session, link: &ClientLink) {
    link.holding().await;
    if session.is_body_done() && session.read_body_or_idle(true).await.is_err() {
        link.client_gone();
        return;
    }
    std::future::pending().await
}

/// How long a client may take to send the body the access phase reads
/// (nginx's `client_body_timeout`, shorter: buy bodies are tiny).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request body is not handed to the access phase.
enum BodyRefused {
    TooLarge,
    Timeout,
}

/// Reads the whole request body, up to `limit` bytes, with Pingora's retry
/// buffer on: that buffer is what Pingora sends to the backend once the
/// body has been read here (through `request_body_filter`), so the backend
/// gets exactly the bytes the client sent, and again on a connect retry.
/// No body: `None`, without allocating.
async fn read_body(session: &mut Session, limit: usize) -> Result<Option<Bytes>, BodyRefused> {
    if session.is_body_empty() {
        return Ok(None);
    }
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyRefused::TooLarge);
    }
    session.enable_retry_buffering();
    let mut first: Option<Bytes> = None;
    let mut more: Option<bytes::BytesMut> = None;
    let mut len = 0usize;
    loop {
        let chunk = match tokio::time::timeout(BODY_READ_TIMEOUT, session.read_request_body()).await
        {
            Err(_) => return Err(BodyRefused::Timeout),
            // A client that breaks off its body: nothing to forward.
            Ok(Err(_)) => return Err(BodyRefused::Timeout),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        len += chunk.len();
        if len > limit {
            return Err(BodyRefused::TooLarge);
        }
        match (&first, &mut more) {
            (None, _) => first = Some(chunk),
            (Some(f), None) => {
                let mut m = bytes::BytesMut::with_capacity(len);
                m.extend_from_slice(f);
                m.extend_from_slice(&chunk);
                more = Some(m);
            }
            (Some(_), Some(m)) => m.extend_from_slice(&chunk),
        }
    }
    Ok(more.map(|m| m.freeze()).or(first).or(Some(Bytes::new())))
}

/// A `content-length` value without going through `fmt`.
fn content_length(len: usize) -> http::HeaderValue {
    let mut buf = itoa::Buffer::new();
    http::HeaderValue::from_str(buf.format(len)).expect("digits are a header value")
}

/// The metric label of a status (no allocation for the usual ones).
fn status_label(status: u16) -> std::borrow::Cow<'static, str> {
    let known = match status {
        0 => "0",
        200 => "200",
        202 => "202",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        410 => "410",
        413 => "413",
        422 => "422",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => return status.to_string().into(),
    };
    known.into()
}

/// Writes a complete response: constant headers, then the headers a
/// script set (taken, not copied).
async fn respond(
    session: &mut Session,
    status: u16,
    headers: &[(&'static str, &'static str)],
    extra: Vec<(String, String)>,
    body: Bytes,
) -> Result<()> {
    drain_small_body(session).await;
    let mut resp = ResponseHeader::build(status, Some(headers.len() + extra.len() + 2))?;
    for (k, v) in headers {
        resp.insert_header(*k, http::HeaderValue::from_static(v))?;
    }
    for (k, v) in extra {
        resp.append_header(k, v)?;
    }
    resp.insert_header("content-length", content_length(body.len()))?;
    let head_only = session.req_header().method == http::Method::HEAD;
    let end = head_only || body.is_empty();
    session.write_response_header(Box::new(resp), end).await?;
    if !end {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

async fn respond_json(session: &mut Session, status: u16, body: Bytes) -> Result<()> {
    respond(
        session,
        status,
        &[
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ],
        Vec::new(),
        body,
    )
    .await
}

impl Edge {
    async fn serve_static(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        drain_small_body(session).await;
        let method = &session.req_header().method;
        if method != http::Method::GET && method != http::Method::HEAD {
            ctx.answered = Some("method");
            let mut body = error_body("bad_request", "method not allowed on this path");
            if method == http::Method::OPTIONS {
                body = Bytes::new();
            }
            respond(
                session,
                405,
                &[("content-type", "application/json"), ("allow", "GET, HEAD")],
                Vec::new(),
                body,
            )
            .await?;
            return Ok(true);
        }
        let req = session.req_header();
        let raw = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
        let reply =
            self.static_files
                .serve(raw, header("if-none-match"), header("accept-encoding"));
        ctx.answered = Some("static");
        match reply {
            StaticReply::Ok { entry, encoding } => {
                let body = match encoding {
                    Some("br") => entry.brotli.clone().unwrap_or_default(),
                    Some(_) => entry.gzip.clone().unwrap_or_default(),
                    None => entry.body.clone(),
                };
                let mut extra = Vec::new();
                if let Some(enc) = encoding {
                    extra.push(("content-encoding".to_owned(), enc.to_owned()));
                }
                let mut resp = ResponseHeader::build(200, Some(6))?;
                resp.insert_header("content-type", entry.content_type)?;
                resp.insert_header("etag", entry.etag.as_str())?;
                resp.insert_header("cache-control", entry.cache_control.as_str())?;
                resp.insert_header("vary", "Accept-Encoding")?;
                for (k, v) in extra {
                    resp.insert_header(k, v)?;
                }
                resp.insert_header("content-length", content_length(body.len()))?;
                let head_only = session.req_header().method == http::Method::HEAD;
                session
                    .write_response_header(Box::new(resp), head_only)
                    .await?;
                if !head_only {
                    session.write_response_body(Some(body), true).await?;
                }
            }
            StaticReply::NotModified(entry) => {
                let mut resp = ResponseHeader::build(304, Some(3))?;
                resp.insert_header("etag", entry.etag.as_str())?;
                resp.insert_header("cache-control", entry.cache_control.as_str())?;
                resp.insert_header("vary", "Accept-Encoding")?;
                session.write_response_header(Box::new(resp), true).await?;
            }
            StaticReply::NotFound => {
                respond_json(session, 404, error_body("not_found", "no such page")).await?;
            }
            StaticReply::Refused => {
                ctx.answered = Some("path_refused");
                respond_json(session, 400, error_body("bad_request", "bad path")).await?;
            }
        }
        Ok(true)
    }

    /// The body for the access phase, then identity and the access phase.
    /// `Ok(true)`: answered. Admin requests (operators, larger bodies)
    /// stream their body to the backend unread.
    async fn read_body_then_access(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if ctx.route != Route::Admin {
            match read_body(session, self.max_body_bytes).await {
                Ok(body) => ctx.body = body,
                Err(refused) => {
                    // The rest of the body is unread: the connection closes.
                    session.set_keepalive(None);
                    let (status, code, reason, msg) = match refused {
                        BodyRefused::TooLarge => (
                            413,
                            "payload_too_large",
                            "body_too_large",
                            format!("the request body exceeds {} bytes", self.max_body_bytes),
                        ),
                        BodyRefused::Timeout => (
                            408,
                            "bad_request",
                            "body_timeout",
                            "the request body did not arrive in time".to_owned(),
                        ),
                    };
                    ctx.answered = Some(reason);
                    self.metrics.rejection(reason);
                    respond_json(session, status, error_body(code, &msg)).await?;
                    return Ok(true);
                }
            }
        }
        self.run_access(session, ctx).await
    }

    /// Identity, then the Lua access phase. `Ok(true)`: answered.
    async fn run_access(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let req = session.req_header();
        let xff: Vec<&str> = req
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let client = self.identity.client_addr(peer, &xff);
        ctx.client = Some(client);

        let auth = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth.is_some() {
            match self.identity.verify(auth) {
                Ok(c) => ctx.user = Some((c.sub, c.role.as_str())),
                Err(e) => {
                    ctx.answered = Some("unauthorized");
                    self.metrics.rejection("unauthorized");
                    respond_json(session, 401, error_body("unauthorized", &e.to_string())).await?;
                    return Ok(true);
                }
            }
        }

        // The purchase ticket, before Lua takes anything for the buy.
        if let Some(gate) = &self.tickets
            && ctx.route == Route::Buy
            && req.method == http::Method::POST
        {
            let refused = match &ctx.user {
                None => Some((401, "unauthorized", "missing bearer token".to_owned())),
                Some((user, _)) => {
                    let ticket = req.headers.get(ticket::HEADER).map(|v| v.to_str());
                    let verdict = match ticket {
                        Some(Err(_)) => Err(TicketError::Malformed),
                        Some(Ok(t)) => gate.check(req.uri.path(), user, Some(t)),
                        None => gate.check(req.uri.path(), user, None),
                    };
                    verdict.err().map(|e| (403, e.code(), e.to_string()))
                }
            };
            if let Some((status, code, message)) = refused {
                ctx.answered = Some("ticket");
                ctx.reason = Some(code.to_owned());
                self.metrics.rejection(code);
                respond_json(session, status, error_body(code, &message)).await?;
                return Ok(true);
            }
        }

        // `ngx.var.uri` is nginx's `$uri`; where nginx answers 400, so do we.
        let mut lreq = match Request::parse(req.method.as_str(), req.uri.path()) {
            Ok(r) => r,
            Err(e) => {
                ctx.answered = Some("bad_uri");
                self.metrics.rejection("bad_uri");
                respond_json(session, 400, error_body("bad_request", &e.to_string())).await?;
                return Ok(true);
            }
        };
        lreq.args = req.uri.query().unwrap_or("").to_owned();
        lreq.body = ctx.body.clone();
        lreq.headers = req
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        lreq.remote_addr = client;
        lreq.host = req
            .headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .map(|h| h.rsplit_once(':').map(|(h, _)| h).unwrap_or(h).to_owned())
            .unwrap_or_default();
        if let Some(addr) = session.server_addr().and_then(|a| a.as_inet()) {
            lreq.server_port = addr.port();
        }
        let (user, role) = ctx
            .user
            .as_ref()
            .map(|(u, r)| (u.clone(), (*r).to_owned()))
            .unwrap_or_default();
        lreq.vars.insert("user_id".to_owned(), user);
        lreq.vars.insert("user_role".to_owned(), role);

        // The access phase, and the client's connection once a hold of the
        // admission window starts in it.
        let link = ClientLink::new();
        let run = link.scope(self.access.run(lreq));
        tokio::pin!(run);
        let decision = tokio::select! {
            d = &mut run => d,
            () = watch_client(session, &link) => run.await,
        };
        ctx.permits = decision.permits;
        ctx.reason = decision.reason;
        ctx.lua_log = decision.log;
        if link.is_gone() {
            // Held, and the client left: whatever the script decided,
            // nothing is forwarded and nobody is there to answer.
            self.settle(ctx, Some(Effect::Kept));
            ctx.answered = Some("client_gone");
            session.set_keepalive(None);
            return Ok(true);
        }
        if let Some(e) = &decision.error {
            tracing::error!(error = %e, "access script failed");
        }
        match decision.outcome {
            AccessOutcome::Continue {
                set_headers,
                cleared_headers,
                response_headers,
            } => {
                ctx.set_headers = set_headers;
                ctx.cleared_headers = cleared_headers;
                ctx.response_headers = response_headers;
                Ok(false)
            }
            AccessOutcome::Respond {
                status,
                headers,
                body,
            } => {
                // Decided not to forward after all: the permits go back.
                self.settle(ctx, Some(Effect::Kept));
                ctx.answered = Some("access");
                match ctx.reason.as_deref() {
                    Some(reason) => self.metrics.rejection(reason),
                    None => self.metrics.rejection(&status_label(status)),
                }
                let body = if body.is_empty() {
                    error_body(code_for(status), "refused at the edge")
                } else {
                    Bytes::from(body)
                };
                let has_ct = headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
                let ct: &[(&str, &str)] = if has_ct {
                    &[]
                } else {
                    &[("content-type", "application/json")]
                };
                respond(session, status, ct, headers, body).await?;
                Ok(true)
            }
        }
    }

    /// Settles the request's permits with what the backend said became of
    /// them (`None`: it did not say, or never answered).
    fn settle(&self, ctx: &mut Ctx, effect: Option<Effect>) {
        if let Some(p) = &self.permits {
            for permit in ctx.permits.drain(..) {
                p.finish(permit, effect);
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            route: Route::Unknown,
            start: Instant::now(),
            client: None,
            user: None,
            permits: Vec::new(),
            upstream: None,
            tried: Vec::new(),
            upstream_start: None,
            upstream_status: None,
            set_headers: Vec::new(),
            cleared_headers: Vec::new(),
            response_headers: Vec::new(),
            answered: None,
            reason: None,
            body: None,
            lua_log: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let route = Route::of(session.req_header().uri.path());
        ctx.route = route;
        match route {
            Route::Clock => {
                ctx.answered = Some("clock");
                respond_json(session, 200, clock::body()).await?;
                Ok(true)
            }
            Route::Health => {
                ctx.answered = Some("health");
                respond_json(session, 200, Bytes::from_static(b"{\"status\":\"ok\"}")).await?;
                Ok(true)
            }
            Route::Static => self.serve_static(session, ctx).await,
            Route::Admin if !self.expose_admin => {
                ctx.answered = Some("not_found");
                respond_json(session, 404, error_body("not_found", "no such path")).await?;
                Ok(true)
            }
            Route::Unknown => {
                ctx.answered = Some("not_found");
                respond_json(session, 404, error_body("not_found", "no such path")).await?;
                Ok(true)
            }
            Route::Buy | Route::Api | Route::Admin => {
                self.read_body_then_access(session, ctx).await
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // Release the previous pick before choosing again.
        ctx.upstream = None;
        let Some(pick) = self.upstreams.select(&ctx.tried) else {
            return Error::e_explain(ConnectNoRoute, "no backend left to try");
        };
        ctx.tried.push(pick.index);
        let backend = self.upstreams.backend(pick.index);
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        ctx.upstream = Some(pick);
        ctx.upstream_start = Some(Instant::now());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the backend: safe to try another, even for a buy.
        let more =
            ctx.tried.len() <= self.connect_retries && ctx.tried.len() < self.upstreams.len();
        tracing::warn!(peer = %peer, retry = more, "backend connect failed");
        e.set_retry(more);
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for h in IDENTITY_HEADERS {
            upstream_request.remove_header(*h);
        }
        // Only the edge names permits.
        upstream_request.remove_header(permit::REQUEST_HEADER);
        if let (Some(p), [one]) = (&self.permits, ctx.permits.as_slice()) {
            upstream_request.insert_header(permit::REQUEST_HEADER, p.header(one))?;
        }
        upstream_request.remove_header("x-forwarded-for");
        for h in &ctx.cleared_headers {
            upstream_request.remove_header(h.as_str());
        }
        for (k, v) in &ctx.set_headers {
            let lower = k.to_ascii_lowercase();
            if IDENTITY_HEADERS.contains(&lower.as_str()) {
                continue;
            }
            upstream_request.insert_header(lower, v.as_str())?;
        }
        if let Some(client) = ctx.client {
            let c = client.to_string();
            upstream_request.insert_header("x-forwarded-for", c.as_str())?;
            upstream_request.insert_header("x-real-ip", c.as_str())?;
        }
        if let Some((user, role)) = &ctx.user {
            upstream_request.insert_header(USER_HEADER, user.as_str())?;
            upstream_request.insert_header(ROLE_HEADER, *role)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if status < 200 {
            return Ok(());
        }
        ctx.upstream_status = Some(status);
        if let (Some(start), Some(up)) = (ctx.upstream_start, &ctx.upstream) {
            self.metrics
                .upstream(&self.upstreams.backend(up.index).label, start.elapsed());
        }
        let effect = upstream_response
            .headers
            .get(permit::RESPONSE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Effect::parse);
        upstream_response.remove_header(permit::RESPONSE_HEADER);
        self.settle(ctx, effect);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for (k, v) in &ctx.response_headers {
            upstream_response.append_header(k.clone(), v.as_str())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 503,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 500,
            },
        };
        if ctx.upstream_status.is_none() {
            // A request that never reached a backend changed nothing.
            let never_sent = matches!(
                e.etype(),
                ErrorType::ConnectTimedout
                    | ErrorType::ConnectRefused
                    | ErrorType::ConnectNoRoute
                    | ErrorType::ConnectError
            );
            self.settle(ctx, never_sent.then_some(Effect::Kept));
        }
        if code > 0 {
            let body = error_body(code_for(code), "the sale service is unavailable, try again");
            // Pingora closes the connection after a proxy failure: say so
            // (it writes `Connection: close` for a session without
            // keep-alive), so clients do not reuse a closing connection.
            session.set_keepalive(None);
            let _ = respond_json(session, code, body).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // A permit still held here never got an answer from the backend.
        self.settle(ctx, None);
        ctx.upstream = None;
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        self.metrics
            .request(ctx.route.label(), &status_label(status));
        if self.access_log {
            let req = session.req_header();
            tracing::info!(
                target: "access",
                method = %req.method,
                path = %req.uri.path(),
                status,
                route = ctx.route.label(),
                client = ?ctx.client,
                user = ctx.user.as_ref().map(|(u, _)| u.as_str()).unwrap_or(""),
                by = ctx.answered.unwrap_or("backend"),
                reason = ctx.reason.as_deref().unwrap_or(""),
                ms = ctx.start.elapsed().as_secs_f64() * 1000.0,
                error = e.map(|e| e.to_string()).unwrap_or_default(),
            );
        }
        // The Lua log phase (log_by_lua), for every request that ran the
        // access phase, answered by the edge, the backend or a failure.
        // Nothing written means the client went away: nginx's 499.
        if let Some(log) = ctx.lua_log.take() {
            let status = if status == 0 { 499 } else { status };
            self.access
                .run_log(log, status, ctx.start.elapsed().as_secs_f64())
                .await;
        }
    }
}
