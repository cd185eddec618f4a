//! Typed configuration: embedded defaults, then a TOML file, then
//! `SECKILL__SECTION__KEY` environment variables, validated before anything
//! binds.
//!
//! This module owns the file format and its validation; it does no I/O beyond
//! reading the file. Secrets are never printed: [`Config`]'s `Debug` hides the
//! token and ticket secrets.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
/// Token settings, shared with the edge.
pub use seckill_proto::auth::AuthConfig;
use serde::{Deserialize, Serialize};

/// Everything the backend needs to start.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub redis: RedisConfig,
    pub rabbitmq: RabbitConfig,
    pub database: DatabaseConfig,
    pub writer: WriterConfig,
    pub sale: SaleConfig,
    pub payment: PaymentConfig,
    pub lifecycle: LifecycleConfig,
    pub pages: PagesConfig,
    pub clock: ClockConfig,
    pub durability: DurabilityConfig,
    pub tickets: TicketsConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the API (buyer and admin paths).
    pub listen: SocketAddr,
    /// Address of the Prometheus `/metrics` endpoint; kept off the API port.
    pub metrics_listen: Option<SocketAddr>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How long a graceful shutdown waits for in-flight work.
    pub shutdown_grace_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    /// Prefix of every key; lets several sales or tests share one server.
    pub key_prefix: String,
    /// Longest wait for one Redis reply or (re)connection; a buy answers
    /// 503 after it rather than hanging on a server that stopped answering.
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitConfig {
    pub url: String,
    /// The durable order queue; its dead-letter queue is `<queue>.dead`.
    pub queue: String,
    /// `quorum` (replicated, the default) or `classic`.
    pub queue_type: QueueType,
    /// How long a buy waits for the broker to confirm its order message.
    pub confirm_timeout_ms: u64,
    /// Most messages published as one group (their confirms awaited
    /// together); 1 (the default) publishes each message alone. Groups pay
    /// where the broker's confirm latency bounds the buy path (a broker
    /// across a network); where the backend's CPU does, they cost a hop.
    pub publish_batch: usize,
    /// How long a group waits for more messages after its first, in µs
    /// (0: a group is whatever is waiting when the previous one was sent).
    pub publish_window_us: u64,
    /// How long a (re)connection attempt may take.
    pub connect_timeout_ms: u64,
    /// Deliveries of one message before the broker dead-letters it.
    pub delivery_limit: u32,
    /// For throwaway environments (tests, trial runs) only: the broker
    /// deletes every queue of the topology, with its messages, once it has
    /// gone unused (no consumer, no redeclaration) this long, so an
    /// abandoned run leaves nothing behind. Must exceed every delay the
    /// topology holds messages for. Unset (the default) in production.
    pub queue_expires_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Quorum,
    Classic,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://file.db?mode=rwc` (default) or `postgres://…`.
    pub url: String,
    pub max_connections: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// Run the order writer inside `serve` (it can also run alone: `worker`).
    pub enabled: bool,
    /// Unacknowledged messages the broker may push ahead.
    pub prefetch: u16,
    /// Most orders written in one transaction.
    pub batch_size: usize,
    /// How long a batch waits to fill after its first message.
    pub batch_wait_ms: u64,
    /// Pause after a failed write before the batch is handed on.
    pub retry_backoff_ms: u64,
    /// Delays of the retry tiers (one TTL queue each): the n-th failed write
    /// of a message waits `retry_delays_ms[n-1]` (the last tier repeats).
    pub retry_delays_ms: Vec<u64>,
    /// Write attempts of one message before it is dead-lettered (its units
    /// released, its attempt cancelled with reason `dead_letter`).
    pub max_attempts: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaleConfig {
    /// Time a buyer has to pay an order before it expires.
    pub payment_timeout_secs: u64,
    /// How long `GET /api/rounds` answers from memory before re-reading.
    pub rounds_cache_ms: u64,
    /// Largest quantity one buy request may ask for.
    pub max_qty: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentConfig {
    /// `simulated` is the only provider built in.
    pub provider: PaymentProviderKind,
    /// What the simulated provider does with a charge.
    pub simulated_outcome: SimulatedOutcome,
    /// Longest wait for the provider; after it the order stays `paying`
    /// until the sweep learns the outcome from the provider.
    pub timeout_ms: u64,
    /// How long after a payment started a "no charge" answer counts as
    /// conclusive (and the provider is asked to void the pending charge);
    /// default twice `timeout_ms`.
    pub lookup_settle_ms: Option<u64>,
}

impl PaymentConfig {
    /// `lookup_settle_ms`, or its default.
    pub fn lookup_settle_ms(&self) -> u64 {
        self.lookup_settle_ms
            .unwrap_or_else(|| self.timeout_ms.saturating_mul(2))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentProviderKind {
    Simulated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimulatedOutcome {
    Succeed,
    Fail,
    Hang,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Run the expiry consumer and the sweep wherever the order writer runs.
    pub enabled: bool,
    /// How often the sweep looks for orders whose expiry message was lost,
    /// half-applied settlements, payments of unknown outcome, and Redis
    /// data loss.
    pub sweep_interval_ms: u64,
    /// Most orders one sweep pass handles per kind.
    pub sweep_batch: u64,
    /// An order message older than this when the writer receives it is not
    /// turned into a late order: its units are released (reason `backlog`).
    pub backlog_threshold_ms: u64,
    /// An attempt still `queued` (reserved, not taken by the order writer)
    /// this long after the publisher's confirm timeout lost its way (a
    /// reply lost, a process killed between reserve and confirm): the sweep
    /// publishes its order message again, and the writer absorbs a
    /// duplicate.
    pub queued_grace_ms: u64,
    /// An unpaid order expires this long after its `pay_by` by the clock of
    /// the node deciding, and a payment is taken until then: nodes whose
    /// clocks disagree by up to this much never refuse a payment sent in
    /// time, nor expire an order early.
    pub expiry_grace_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PagesConfig {
    /// Directory the static sale pages are rendered into (served by the edge).
    pub dir: PathBuf,
}

/// Where buys and orders wait on local disk while Redis or RabbitMQ is
/// away (`crate::durable`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurabilityConfig {
    /// Directory of this process's order spool (one process per directory).
    pub spool_dir: PathBuf,
    /// Directory of this process's buy journal (one process per directory).
    pub journal_dir: PathBuf,
    /// Most order messages the spool holds; past it a buy whose publish is
    /// not confirmed is released and answered 503.
    pub spool_max_entries: usize,
    /// Most journaled buys per item waiting for Redis; past it buys answer
    /// 503. Default: the item's stock.
    pub journal_bound: Option<usize>,
    /// Where the order writer runs in this process, spooled orders are
    /// handed to it directly once the broker has failed this long.
    pub direct_after_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// Shifts this node's clock (sale windows, pay-by times, expiry) by
    /// this many milliseconds; 0 in production. For testing skewed nodes.
    pub offset_ms: i64,
}

/// Purchase tickets (`seckill_proto::ticket`): when enabled a buy must
/// carry a ticket asked for shortly before the sale starts. `Debug` never
/// shows the secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TicketsConfig {
    /// Require a ticket on every buy and answer ticket requests.
    pub enabled: bool,
    /// The HMAC-SHA256 secret shared with the edge (at least 16 bytes;
    /// required when enabled). Each round's key is derived from it.
    pub secret: String,
    /// How long before a round's start tickets are handed out, in ms.
    pub lead_ms: u64,
    /// How long a ticket is valid after it was issued, in ms (never past
    /// the round's end).
    pub ttl_ms: u64,
    /// Ticket requests one buyer may make per item per `limit_window_ms`.
    pub per_user_limit: u64,
    /// Ticket requests one client address may make per item per
    /// `limit_window_ms`.
    pub per_client_limit: u64,
    /// The window of both request limits, in ms.
    pub limit_window_ms: u64,
    /// How long a proof-of-work challenge (rounds with `pow_difficulty`)
    /// can be solved and used after it was handed out, in ms (never past
    /// the round's end).
    pub challenge_ttl_ms: u64,
}

impl Default for TicketsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            secret: String::new(),
            lead_ms: 2_000,
            ttl_ms: 30_000,
            per_user_limit: 5,
            per_client_limit: 50,
            limit_window_ms: 10_000,
            challenge_ttl_ms: 600_000,
        }
    }
}

impl fmt::Debug for TicketsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketsConfig")
            .field("enabled", &self.enabled)
            .field("secret", &"<hidden>")
            .field("lead_ms", &self.lead_ms)
            .field("ttl_ms", &self.ttl_ms)
            .field("per_user_limit", &self.per_user_limit)
            .field("per_client_limit", &self.per_client_limit)
            .field("limit_window_ms", &self.limit_window_ms)
            .field("challenge_ttl_ms", &self.challenge_ttl_ms)
            .finish()
    }
}

/// Largest `clock.offset_ms` either way (one day).
pub const MAX_CLOCK_OFFSET_MS: i64 = 86_400_000;

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8081).into(),
            metrics_listen: Some(([127, 0, 0, 1], 9181).into()),
            max_body_bytes: 16 * 1024,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            key_prefix: "sk".into(),
            timeout_ms: 1_000,
        }
    }
}

impl Default for RabbitConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue: "seckill.orders".into(),
            queue_type: QueueType::Quorum,
            confirm_timeout_ms: 5_000,
            publish_batch: 1,
            publish_window_us: 0,
            connect_timeout_ms: 3_000,
            delivery_limit: 20,
            queue_expires_ms: None,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://seckill.db?mode=rwc".into(),
            max_connections: 10,
        }
    }
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            prefetch: 512,
            batch_size: 200,
            batch_wait_ms: 10,
            retry_backoff_ms: 500,
            retry_delays_ms: vec![1_000, 5_000, 30_000],
            max_attempts: 4,
        }
    }
}

impl Default for SaleConfig {
    fn default() -> Self {
        Self {
            payment_timeout_secs: 600,
            rounds_cache_ms: 1_000,
            max_qty: 100,
        }
    }
}

impl Default for PaymentConfig {
    fn default() -> Self {
        Self {
            provider: PaymentProviderKind::Simulated,
            simulated_outcome: SimulatedOutcome::Succeed,
            timeout_ms: 5_000,
            lookup_settle_ms: None,
        }
    }
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sweep_interval_ms: 5_000,
            sweep_batch: 500,
            backlog_threshold_ms: 120_000,
            queued_grace_ms: 10_000,
            expiry_grace_ms: 2_000,
        }
    }
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        Self {
            spool_dir: PathBuf::from("spool"),
            journal_dir: PathBuf::from("journal"),
            spool_max_entries: 100_000,
            journal_bound: None,
            direct_after_ms: 10_000,
        }
    }
}

impl Default for PagesConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("pages"),
        }
    }
}

/// A configuration that cannot be used, with the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl Config {
    /// Defaults, then `file` (if given), then `SECKILL__*` environment
    /// variables (e.g. `SECKILL__REDIS__URL`), validated.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid(
                    "file",
                    format!("{} does not exist", path.display()),
                ));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed("SECKILL__").split("__"));
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every rule a running backend relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.auth
            .validate()
            .map_err(|r| invalid("auth.secret", r))?;
        if !(self.redis.url.starts_with("redis://")
            || self.redis.url.starts_with("rediss://")
            || self.redis.url.starts_with("unix://"))
        {
            return Err(invalid(
                "redis.url",
                "must start with redis://, rediss:// or unix://",
            ));
        }
        if self.redis.timeout_ms == 0 {
            return Err(invalid("redis.timeout_ms", "must be positive"));
        }
        let p = &self.redis.key_prefix;
        if p.is_empty() || p.len() > 64 || p.contains(['{', '}', ' ']) {
            return Err(invalid(
                "redis.key_prefix",
                "1-64 characters without braces or spaces",
            ));
        }
        if !(self.rabbitmq.url.starts_with("amqp://") || self.rabbitmq.url.starts_with("amqps://"))
        {
            return Err(invalid(
                "rabbitmq.url",
                "must start with amqp:// or amqps://",
            ));
        }
        if self.rabbitmq.queue.is_empty() || self.rabbitmq.queue.len() > 200 {
            return Err(invalid("rabbitmq.queue", "1-200 characters"));
        }
        if self.rabbitmq.confirm_timeout_ms == 0 || self.rabbitmq.connect_timeout_ms == 0 {
            return Err(invalid("rabbitmq", "timeouts must be positive"));
        }
        if !(1..=4096).contains(&self.rabbitmq.publish_batch) {
            return Err(invalid("rabbitmq.publish_batch", "1-4096 messages"));
        }
        if self.rabbitmq.publish_window_us > 10_000 {
            return Err(invalid(
                "rabbitmq.publish_window_us",
                "at most 10000 (10 ms): every buy waits for it",
            ));
        }
        if self.rabbitmq.delivery_limit == 0 {
            return Err(invalid("rabbitmq.delivery_limit", "must be positive"));
        }
        if let Some(expires) = self.rabbitmq.queue_expires_ms {
            let longest_delay = self
                .writer
                .retry_delays_ms
                .iter()
                .copied()
                .chain([self.expiry_delay_ms()])
                .max()
                .unwrap_or(0);
            if expires <= longest_delay || expires > i32::MAX as u64 {
                return Err(invalid(
                    "rabbitmq.queue_expires_ms",
                    "must exceed every retry delay and the payment timeout plus grace (and fit 32 bits)",
                ));
            }
        }
        if !(self.database.url.starts_with("sqlite:")
            || self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return Err(invalid("database.url", "must be sqlite:… or postgres://…"));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be positive"));
        }
        if self.writer.batch_size == 0 || self.writer.batch_size > 10_000 {
            return Err(invalid("writer.batch_size", "1-10000"));
        }
        if self.writer.prefetch == 0 {
            return Err(invalid("writer.prefetch", "must be positive"));
        }
        if self.writer.retry_delays_ms.is_empty()
            || self.writer.retry_delays_ms.len() > 10
            || self.writer.retry_delays_ms.contains(&0)
        {
            return Err(invalid(
                "writer.retry_delays_ms",
                "1-10 positive delays in milliseconds",
            ));
        }
        if self.writer.max_attempts == 0 {
            return Err(invalid("writer.max_attempts", "must be positive"));
        }
        if self.payment.timeout_ms == 0 {
            return Err(invalid("payment.timeout_ms", "must be positive"));
        }
        if self.payment.lookup_settle_ms() < self.payment.timeout_ms {
            return Err(invalid(
                "payment.lookup_settle_ms",
                "must be at least payment.timeout_ms",
            ));
        }
        if self.lifecycle.sweep_interval_ms == 0 || self.lifecycle.sweep_batch == 0 {
            return Err(invalid(
                "lifecycle",
                "sweep_interval_ms and sweep_batch must be positive",
            ));
        }
        if self.lifecycle.backlog_threshold_ms == 0 {
            return Err(invalid(
                "lifecycle.backlog_threshold_ms",
                "must be positive",
            ));
        }
        if self.lifecycle.expiry_grace_ms > 60_000 {
            return Err(invalid("lifecycle.expiry_grace_ms", "at most 60000"));
        }
        if self.sale.payment_timeout_secs == 0 {
            return Err(invalid("sale.payment_timeout_secs", "must be positive"));
        }
        if self.sale.max_qty < 1 || self.sale.max_qty > 1_000_000 {
            return Err(invalid("sale.max_qty", "1-1000000"));
        }
        if self.http.max_body_bytes < 64 {
            return Err(invalid("http.max_body_bytes", "at least 64"));
        }
        if self.pages.dir.as_os_str().is_empty() {
            return Err(invalid("pages.dir", "must not be empty"));
        }
        let d = &self.durability;
        if d.spool_dir.as_os_str().is_empty() || d.journal_dir.as_os_str().is_empty() {
            return Err(invalid(
                "durability",
                "spool_dir and journal_dir must not be empty",
            ));
        }
        if d.spool_dir == d.journal_dir {
            return Err(invalid(
                "durability.journal_dir",
                "must differ from durability.spool_dir",
            ));
        }
        if d.spool_max_entries == 0 || d.spool_max_entries > 10_000_000 {
            return Err(invalid("durability.spool_max_entries", "1-10000000"));
        }
        if d.journal_bound == Some(0) || d.journal_bound.is_some_and(|b| b > 10_000_000) {
            return Err(invalid("durability.journal_bound", "1-10000000 when set"));
        }
        if d.direct_after_ms == 0 {
            return Err(invalid("durability.direct_after_ms", "must be positive"));
        }
        self.validate_tickets()?;
        if self.clock.offset_ms.abs() > MAX_CLOCK_OFFSET_MS {
            return Err(invalid(
                "clock.offset_ms",
                "at most one day (86400000) either way",
            ));
        }
        Ok(())
    }

    fn validate_tickets(&self) -> Result<(), ConfigError> {
        let t = &self.tickets;
        if !t.enabled {
            return Ok(());
        }
        seckill_proto::ticket::validate_secret(&t.secret)
            .map_err(|r| invalid("tickets.secret", r))?;
        if t.secret == seckill_proto::auth::DEV_SECRET && !self.auth.allow_dev_secret {
            return Err(invalid(
                "tickets.secret",
                "is the development secret shipped with Seckill: set a secret of your own",
            ));
        }
        if t.lead_ms > 3_600_000 {
            return Err(invalid("tickets.lead_ms", "at most 3600000 (one hour)"));
        }
        if t.ttl_ms == 0 || t.ttl_ms > 3_600_000 {
            return Err(invalid("tickets.ttl_ms", "1-3600000 (one hour)"));
        }
        if t.per_user_limit == 0 || t.per_client_limit == 0 {
            return Err(invalid(
                "tickets",
                "per_user_limit and per_client_limit must be positive",
            ));
        }
        if t.limit_window_ms == 0 || t.limit_window_ms > 3_600_000 {
            return Err(invalid("tickets.limit_window_ms", "1-3600000 (one hour)"));
        }
        if t.challenge_ttl_ms == 0 || t.challenge_ttl_ms > 3_600_000 {
            return Err(invalid("tickets.challenge_ttl_ms", "1-3600000 (one hour)"));
        }
        Ok(())
    }

    /// The payment timeout in milliseconds.
    pub fn payment_timeout_ms(&self) -> i64 {
        (self.sale.payment_timeout_secs as i64).saturating_mul(1000)
    }

    /// How long an order's expiry message waits in its delay queue: the
    /// payment timeout plus `lifecycle.expiry_grace_ms` (at least 1 ms).
    pub fn expiry_delay_ms(&self) -> u64 {
        (self.payment_timeout_ms() + self.lifecycle.expiry_grace_ms as i64).max(1) as u64
    }

    /// Orders whose `pay_by` is at or before this are overdue at `now_ms`
    /// (`lifecycle.expiry_grace_ms` earlier: clocks of nodes may disagree).
    pub fn overdue_before(&self, now_ms: i64) -> i64 {
        now_ms - self.lifecycle.expiry_grace_ms as i64
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.http.shutdown_grace_ms)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("http", &self.http)
            .field("auth", &self.auth)
            .field("redis", &self.redis)
            .field("rabbitmq", &self.rabbitmq)
            .field("database", &self.database)
            .field("writer", &self.writer)
            .field("sale", &self.sale)
            .field("payment", &self.payment)
            .field("lifecycle", &self.lifecycle)
            .field("pages", &self.pages)
            .field("clock", &self.clock)
            .field("durability", &self.durability)
            .field("tickets", &self.tickets)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_on_a_development_machine() {
        let mut c = Config::default();
        c.auth.allow_dev_secret = true;
        c.validate().unwrap();
    }

    #[test]
    fn the_default_secret_is_refused_without_the_development_flag() {
        let e = Config::default().validate().unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Invalid {
                field: "auth.secret",
                ..
            }
        ));
        assert!(e.to_string().contains("auth.allow_dev_secret"), "{e}");
    }

    #[test]
    fn short_secret_is_refused() {
        let mut c = Config::default();
        c.auth.secret = "short".into();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "auth.secret",
                ..
            })
        ));
    }

    #[test]
    fn queues_may_not_expire_while_they_hold_a_delayed_message() {
        let mut c = Config::default();
        c.auth.allow_dev_secret = true;
        let payment_wait = c.expiry_delay_ms();
        c.rabbitmq.queue_expires_ms = Some(payment_wait);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "rabbitmq.queue_expires_ms",
                ..
            })
        ));
        c.rabbitmq.queue_expires_ms = Some(payment_wait + 1);
        c.validate().unwrap();
    }

    #[test]
    fn braces_in_prefix_are_refused() {
        let mut c = Config::default();
        c.redis.key_prefix = "a{b}".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn clock_offsets_beyond_a_day_are_refused() {
        let mut c = Config::default();
        c.auth.allow_dev_secret = true;
        c.clock.offset_ms = -2_000;
        c.validate().unwrap();
        c.clock.offset_ms = MAX_CLOCK_OFFSET_MS + 1;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "clock.offset_ms",
                ..
            })
        ));
    }

    #[test]
    fn durability_rules() {
        let mut c = Config::default();
        c.auth.allow_dev_secret = true;
        c.durability.journal_dir = c.durability.spool_dir.clone();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "durability.journal_dir",
                ..
            })
        ));
        c.durability.journal_dir = "j".into();
        c.durability.journal_bound = Some(0);
        assert!(c.validate().is_err());
        c.durability.journal_bound = Some(5);
        c.validate().unwrap();
    }

    #[test]
    fn debug_hides_secret() {
        let mut c = Config::default();
        c.tickets.secret = "ticket-secret-of-some-length".into();
        let s = format!("{c:?}");
        assert!(!s.contains("dev-only-secret"));
        assert!(!s.contains("ticket-secret"));
    }

    #[test]
    fn enabled_tickets_need_a_secret() {
        let mut c = Config::default();
        c.auth.allow_dev_secret = true;
        c.tickets.enabled = true;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "tickets.secret",
                ..
            })
        ));
        c.tickets.secret = "ticket-secret-of-some-length".into();
        c.validate().unwrap();
        c.tickets.ttl_ms = 0;
        assert!(c.validate().is_err());
    }
}
