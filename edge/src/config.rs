//! Typed configuration of one edge node: embedded defaults, then a TOML
//! file, then `SECKILL_EDGE__SECTION__KEY` environment variables, validated
//! before anything binds.
//!
//! This module owns the file format and its validation only; it opens no
//! sockets. The token secret never appears in `Debug` output or logs.

use std::{
    collections::BTreeMap, fmt, net::IpAddr, net::SocketAddr, path::Path, path::PathBuf,
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
/// Token settings, shared with the backend.
pub use seckill_proto::auth::AuthConfig;
use serde::{Deserialize, Serialize};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable could not be parsed.
    #[error("cannot read the configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The largest `lua.max_body_bytes`: the body read before the access phase
/// reaches the backend through Pingora's retry buffer, which holds 64 KiB.
pub const MAX_BODY_LIMIT: usize = 64 * 1024;

/// Everything one edge node needs to start.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub pages: PagesConfig,
    pub lua: LuaConfig,
    pub upstream: UpstreamConfig,
    pub permits: PermitsConfig,
    pub tickets: TicketsConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The buyer-facing listener.
    pub listen: SocketAddr,
    /// Prometheus `/metrics`, kept off the buyer port.
    pub metrics_listen: Option<SocketAddr>,
    /// Worker threads of the proxy service (one Lua VM each).
    pub threads: usize,
    /// Peers whose `X-Forwarded-For` is believed (IPs or CIDRs). Anyone else
    /// is identified by the TCP peer address.
    pub trusted_proxies: Vec<String>,
    /// Seconds the node keeps accepting after SIGTERM before draining.
    pub grace_period_secs: u64,
    /// Seconds in-flight requests get to finish after the grace period.
    pub shutdown_timeout_secs: u64,
    /// Pingora's pid file and upgrade socket (unique per instance).
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    /// Let the proxy's worker threads steal each other's tasks (Pingora's
    /// default). Off: one single-threaded runtime per thread, as nginx's
    /// workers, so a connection stays on the thread (and Lua VM) that
    /// accepted it and no cross-thread wake-ups are paid per request.
    pub work_stealing: bool,
    /// One `info` line per request (tracing target `access`). Off by
    /// default: formatting it costs as much as a sold-out answer's Lua.
    pub access_log: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PagesConfig {
    /// The directory the backend renders the sale pages into.
    pub dir: PathBuf,
    /// How long a file is served from memory before it is re-read.
    pub cache_ttl_ms: u64,
    /// Files larger than this are not served.
    pub max_file_bytes: u64,
    /// `Cache-Control: max-age` of `/assets/...` (HTML is always revalidated).
    pub asset_max_age_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LuaConfig {
    /// The access chunk. Every other `*.lua` file of its directory is a
    /// module `edge.<name>` (e.g. `edge.limits`).
    pub access: PathBuf,
    /// The log chunk (`log_by_lua`), run after every response of a request
    /// that went through the access phase. None: no log phase.
    pub log: Option<PathBuf>,
    /// Directories searched by `require` (the repository's `lua/`). Every
    /// `*.lua` file under them is read, watched and preloaded.
    pub lib_dirs: Vec<PathBuf>,
    /// Largest request body read for the access phase (`ngx.req`), as
    /// nginx's `client_max_body_size`: a larger one is answered 413. At
    /// most 65536 (Pingora replays at most 64 KiB of a body it has read).
    pub max_body_bytes: usize,
    /// How often the Lua files are checked for changes.
    pub reload_interval_ms: u64,
    /// Shared dicts (name → bytes), as `lua_shared_dict`.
    pub dicts: BTreeMap<String, usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The healthy backend with the fewest requests in flight.
    LeastLoaded,
    RoundRobin,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `host:port` of each backend.
    pub backends: Vec<String>,
    pub selection: Selection,
    /// Probed with `GET`; any 2xx is healthy.
    pub health_path: String,
    pub health_interval_ms: u64,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    /// Other backends tried after a connect failure.
    pub connect_retries: usize,
    /// Proxy `/admin/...` (off: answered 404 at the edge).
    pub expose_admin: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PermitsConfig {
    /// Off: `seckill.permit` always answers `"off"` and nothing is counted.
    pub enabled: bool,
    pub redis_url: String,
    /// The backend's key prefix (`sk`): leases live beside its stock hash.
    pub key_prefix: String,
    /// This node's name in the lease table; empty: `<hostname>-<pid>`.
    pub node_id: String,
    /// Permits leased from Redis at a time (what a dead node can strand).
    pub batch: u32,
    /// A lease not renewed within this time returns to the pool.
    pub lease_ttl_ms: u64,
    /// How long "sold out" or "no permit free" is believed before Redis is
    /// asked again; also the `retry_after_ms` of a buyer answered while
    /// Redis is away.
    pub recheck_ms: u64,
    /// Deadline of a lease call made while a buyer waits (connecting
    /// included): past it the buyer is answered 503 at once.
    pub redis_timeout_ms: u64,
}

/// Purchase tickets, as the backend's `[tickets]`: with `enabled` a buy
/// without a valid ticket is refused here. `Debug` never shows the secret.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TicketsConfig {
    /// Refuse buys that carry no valid ticket (`crate::tickets`).
    pub enabled: bool,
    /// The backend's `tickets.secret` (at least 16 bytes; required when
    /// enabled).
    pub secret: String,
}

impl fmt::Debug for TicketsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketsConfig")
            .field("enabled", &self.enabled)
            .field("secret", &"<hidden>")
            .finish()
    }
}

impl PermitsConfig {
    pub fn settings(&self) -> crate::permits::Settings {
        crate::permits::Settings {
            batch: i64::from(self.batch),
            ttl: Duration::from_millis(self.lease_ttl_ms),
            recheck: Duration::from_millis(self.recheck_ms),
            redis_timeout: Duration::from_millis(self.redis_timeout_ms),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            metrics_listen: Some(([127, 0, 0, 1], 9180).into()),
            threads: 2,
            trusted_proxies: Vec::new(),
            grace_period_secs: 1,
            shutdown_timeout_secs: 10,
            pid_file: "/tmp/seckill-edge.pid".into(),
            upgrade_sock: "/tmp/seckill-edge-upgrade.sock".into(),
            work_stealing: false,
            access_log: false,
        }
    }
}

impl Default for PagesConfig {
    fn default() -> Self {
        Self {
            dir: "pages".into(),
            cache_ttl_ms: 1_000,
            max_file_bytes: 8 << 20,
            asset_max_age_secs: 60,
        }
    }
}

impl Default for LuaConfig {
    fn default() -> Self {
        Self {
            access: "lua/edge/access.lua".into(),
            log: None,
            lib_dirs: vec!["lua".into()],
            max_body_bytes: 16_384,
            reload_interval_ms: 500,
            dicts: BTreeMap::from([
                ("limit_req".into(), 1 << 20),
                ("limit_user".into(), 32 << 20),
            ]),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            backends: vec!["127.0.0.1:8081".into()],
            selection: Selection::LeastLoaded,
            health_path: "/healthz".into(),
            health_interval_ms: 1_000,
            connect_timeout_ms: 1_000,
            read_timeout_ms: 10_000,
            connect_retries: 2,
            expose_admin: false,
        }
    }
}

impl Default for PermitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            redis_url: "redis://127.0.0.1:6379/".into(),
            key_prefix: "sk".into(),
            node_id: String::new(),
            batch: 10,
            lease_ttl_ms: 5_000,
            recheck_ms: 250,
            redis_timeout_ms: 100,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("http", &self.http)
            .field("auth", &self.auth)
            .field("pages", &self.pages)
            .field("lua", &self.lua)
            .field("upstream", &self.upstream)
            .field("permits", &self.permits)
            .field("tickets", &self.tickets)
            .finish()
    }
}

/// An IP network a trusted proxy may connect from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1` or `192.168.1.7`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("bad address {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .trim()
                .parse::<u8>()
                .map_err(|_| format!("bad prefix {s:?}"))?,
            None => max,
        };
        if bits > max {
            return Err(format!("prefix too long in {s:?}"));
        }
        Ok(Self { addr, bits })
    }

    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl Config {
    /// Defaults, then `file` (if given), then `SECKILL_EDGE__*` variables.
    /// Relative paths in the file are taken as they are (relative to the
    /// working directory), like the backend's.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} not found",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        fig = fig.merge(Env::prefixed("SECKILL_EDGE__").split("__"));
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that would only fail later (at bind or first request).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Err(reason) = self.auth.validate() {
            return bad(format!("auth.secret {reason}"));
        }
        if self.http.threads == 0 || self.http.threads > 256 {
            return bad("http.threads must be 1..=256".into());
        }
        if Some(self.http.listen) == self.http.metrics_listen {
            return bad("http.listen and http.metrics_listen must differ".into());
        }
        for p in &self.http.trusted_proxies {
            Cidr::parse(p)
                .map_err(|e| ConfigError::Invalid(format!("http.trusted_proxies: {e}")))?;
        }
        if self.upstream.backends.is_empty() {
            return bad("upstream.backends is empty".into());
        }
        for b in &self.upstream.backends {
            if b.parse::<SocketAddr>().is_err() {
                return bad(format!("upstream.backends: {b:?} is not ip:port"));
            }
        }
        if !self.upstream.health_path.starts_with('/') {
            return bad("upstream.health_path must start with /".into());
        }
        if self.upstream.health_interval_ms < 50 || self.upstream.connect_timeout_ms == 0 {
            return bad("upstream.health_interval_ms >= 50 and connect_timeout_ms > 0".into());
        }
        if self.permits.batch == 0 {
            return bad("permits.batch must be positive".into());
        }
        if self.permits.lease_ttl_ms < 500 {
            return bad("permits.lease_ttl_ms must be at least 500".into());
        }
        if self.permits.recheck_ms == 0 || self.permits.recheck_ms > self.permits.lease_ttl_ms {
            return bad("permits.recheck_ms must be 1..=lease_ttl_ms".into());
        }
        if self.permits.redis_timeout_ms == 0
            || self.permits.redis_timeout_ms * 2 > self.permits.lease_ttl_ms
        {
            return bad("permits.redis_timeout_ms must be 1..=lease_ttl_ms/2".into());
        }
        let node = &self.permits.node_id;
        if node.len() > 64
            || !node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return bad("permits.node_id must be at most 64 of A-Z a-z 0-9 - _ . :".into());
        }
        if self.permits.key_prefix.is_empty() || self.permits.key_prefix.contains(['{', '}']) {
            return bad("permits.key_prefix must be non-empty without braces".into());
        }
        if self.lua.reload_interval_ms < 10 {
            return bad("lua.reload_interval_ms must be at least 10".into());
        }
        if !self.lua.access.is_file() {
            return bad(format!(
                "lua.access {} is not a file",
                self.lua.access.display()
            ));
        }
        if let Some(log) = &self.lua.log
            && !log.is_file()
        {
            return bad(format!("lua.log {} is not a file", log.display()));
        }
        if self.lua.max_body_bytes == 0 || self.lua.max_body_bytes > MAX_BODY_LIMIT {
            return bad(format!("lua.max_body_bytes must be 1..={MAX_BODY_LIMIT}"));
        }
        if self.pages.max_file_bytes == 0 {
            return bad("pages.max_file_bytes must be positive".into());
        }
        if self.tickets.enabled {
            if let Err(reason) = seckill_proto::ticket::validate_secret(&self.tickets.secret) {
                return bad(format!("tickets.secret {reason}"));
            }
            if self.tickets.secret == seckill_proto::auth::DEV_SECRET && !self.auth.allow_dev_secret
            {
                return bad("tickets.secret is the development secret shipped with Seckill".into());
            }
        }
        Ok(())
    }

    /// The trusted proxy networks (validated).
    pub fn trusted_proxies(&self) -> Vec<Cidr> {
        self.http
            .trusted_proxies
            .iter()
            .filter_map(|p| Cidr::parse(p).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("1.2.3.4/33").is_err());
    }

    #[test]
    fn the_development_secret_needs_the_development_flag() {
        let mut c = Config::default();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("auth.allow_dev_secret"), "{e}");
        c.auth.allow_dev_secret = true;
        let e = c
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!e.contains("auth."), "{e}");
    }

    #[test]
    fn lua_body_limit_and_log_file_are_checked() {
        let mut c = Config::default();
        c.auth.allow_dev_secret = true;
        c.lua.access = concat!(env!("CARGO_MANIFEST_DIR"), "/src/config.rs").into();
        c.validate().expect("defaults with an existing access file");
        for bad in [0, MAX_BODY_LIMIT + 1] {
            c.lua.max_body_bytes = bad;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("lua.max_body_bytes"), "{e}");
        }
        c.lua.max_body_bytes = MAX_BODY_LIMIT;
        c.lua.log = Some("/nonexistent/log.lua".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("lua.log"), "{e}");
    }

    #[test]
    fn secret_is_hidden() {
        let s = format!("{:?}", Config::default());
        assert!(!s.contains("dev-only"));
    }
}
