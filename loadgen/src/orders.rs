//! Order-writing benchmarks, for comparing with `pgbench`:
//!
//! - `insert`: N orders written through the order writer's own insert path
//!   (sea-orm `INSERT … VALUES (…), (…) ON CONFLICT DO NOTHING`, one
//!   transaction per batch of B rows, one batch at a time).
//! - `writer`: an approved round with one item of N units is created, N
//!   buyers reserve a unit each in Redis and their order messages are
//!   published (with confirms) to a fresh queue; then the backend's real
//!   order writer drains them — claim in Redis, stock guard, batched insert,
//!   mark ordered, expiry scheduling, ack — and the drain is timed until the
//!   database holds all N orders.
//!
//! `insert` rows go to a round id no real sale uses, so they never mix with
//! a sale's orders; the caller picks the database (a throwaway one in the
//! bench).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, Set,
    TransactionTrait, sea_query::Expr,
};
use seckill_backend::{
    clock::SystemClock,
    config::{Config, QueueType},
    domain::{AttemptId, NewItem, NewRound, RoundStatus},
    lifecycle::{Lifecycle, rebuild},
    payment,
    queue::{OrderMessage, OrderWriter, Publisher, WriterHooks, topology::Topology},
    store::{
        SaleStore, db,
        entities::{order, round},
        orders, rounds,
        sale::ReserveOutcome,
    },
};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What an order-writing run needs.
#[derive(Clone, Debug)]
pub struct OrdersOptions {
    pub database_url: String,
    pub rows: u64,
    pub batch: usize,
    /// For `writer`: the broker, Redis, and the queue name to create.
    pub amqp_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    pub queue: String,
}

/// The figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct OrdersReport {
    pub mode: String,
    pub rows: u64,
    pub batch: usize,
    pub seconds: f64,
    pub rows_per_sec: f64,
    /// `writer` only: how long publishing the messages took.
    pub publish_seconds: Option<f64>,
}

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A round id no sale uses (ids from the database start at 1).
fn bench_round() -> i64 {
    900_000_000_000 + unix_ms() % 1_000_000_000
}

fn row(round: i64, n: u64, now: i64) -> order::ActiveModel {
    let id = AttemptId::new(round, 1, now).to_string();
    order::ActiveModel {
        id: Set(id.clone()),
        attempt_id: Set(id),
        round_id: Set(round),
        item_id: Set(1),
        user_id: Set(format!("bench-user-{n}")),
        qty: Set(1),
        unit_price_cents: Set(100),
        status: Set(order::status::PENDING_PAYMENT.to_owned()),
        reserved_at_ms: Set(now),
        created_at_ms: Set(now),
        pay_by_ms: Set(now + 600_000),
        paid_at_ms: Set(None),
        cancelled_at_ms: Set(None),
        cancel_reason: Set(None),
        payment_started_at_ms: Set(None),
        charge_id: Set(None),
        counters_applied: Set(true),
    }
}

async fn count(db: &DatabaseConnection, round: i64) -> anyhow::Result<u64> {
    Ok(order::Entity::find()
        .filter(order::Column::RoundId.eq(round))
        .count(db)
        .await?)
}

/// Writes `rows` orders through the writer's insert statement.
pub async fn insert(opts: &OrdersOptions) -> anyhow::Result<OrdersReport> {
    let db = db::connect_and_migrate(&opts.database_url, 4)
        .await
        .context("connecting to the database")?;
    let round = bench_round();
    let now = unix_ms();
    let start = Instant::now();
    let mut n = 0;
    while n < opts.rows {
        let k = (opts.rows - n).min(opts.batch as u64);
        let rows: Vec<_> = (n..n + k).map(|i| row(round, i, now)).collect();
        let txn = db.begin().await?;
        orders::insert_ignoring_conflicts(&txn, rows).await?;
        txn.commit().await?;
        n += k;
    }
    let secs = start.elapsed().as_secs_f64();
    let written = count(&db, round).await?;
    anyhow::ensure!(
        written == opts.rows,
        "wrote {written} of {} rows",
        opts.rows
    );
    Ok(OrdersReport {
        mode: "insert".into(),
        rows: opts.rows,
        batch: opts.batch,
        seconds: secs,
        rows_per_sec: opts.rows as f64 / secs,
        publish_seconds: None,
    })
}

/// Publishes `rows` order messages, then times the real order writer
/// draining them into the database.
pub async fn writer(opts: &OrdersOptions) -> anyhow::Result<OrdersReport> {
    let mut cfg = Config::default();
    cfg.database.url = opts.database_url.clone();
    cfg.redis.url = opts.redis_url.clone();
    cfg.redis.key_prefix = opts.redis_prefix.clone();
    cfg.rabbitmq.url = opts.amqp_url.clone();
    cfg.rabbitmq.queue = opts.queue.clone();
    cfg.rabbitmq.queue_type = QueueType::Quorum;
    cfg.writer.batch_size = opts.batch;
    // Nothing here takes a token: the shipped secret is never trusted.
    cfg.auth.allow_dev_secret = true;
    cfg.validate()?;
    let db = db::connect_and_migrate(&cfg.database.url, cfg.database.max_connections)
        .await
        .context("connecting to the database")?;
    let sale = SaleStore::connect(
        &cfg.redis.url,
        &cfg.redis.key_prefix,
        Duration::from_millis(cfg.redis.timeout_ms),
    )
    .await
    .context("connecting to redis")?;

    // An approved round whose item has exactly the units to write.
    let now = unix_ms();
    let new = NewRound {
        name: "order-writer benchmark".into(),
        starts_at_ms: now - 1_000,
        ends_at_ms: now + 3_600_000,
        items: vec![NewItem {
            title: "bench".into(),
            description: String::new(),
            image_url: String::new(),
            original_price_cents: 200,
            sale_price_cents: 100,
            stock: opts.rows as i64,
            per_user_limit: 1,
        }],
        admission_window_ms: 0,
        pow_difficulty: 0,
    };
    let created = rounds::create(&db, &new, "bench", now).await?;
    let (round, item_id) = (created.round.id, created.items[0].id);
    round::Entity::update_many()
        .col_expr(
            round::Column::Status,
            Expr::value(RoundStatus::Approved.as_str()),
        )
        .filter(round::Column::Id.eq(round))
        .exec(&db)
        .await?;
    let cfg = Arc::new(cfg);
    let lc = Lifecycle::new(
        cfg.clone(),
        sale.clone(),
        db.clone(),
        Arc::new(SystemClock),
        payment::from_config(&cfg.payment),
    );
    rebuild::ensure_item(&lc, round, item_id).await?;

    // Reserve and publish every message first (64 publishers, each waiting
    // for its confirms, as the buy path does).
    let topology = Topology::from_config(&cfg);
    let publisher = Arc::new(Publisher::new(cfg.rabbitmq.clone(), topology.clone()));
    publisher
        .warm_up()
        .await
        .context("connecting to the broker")?;
    let pub_start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks = (0..64).map(|_| {
        let (p, next, rows, sale) = (publisher.clone(), next.clone(), opts.rows, sale.clone());
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= rows {
                    return Ok::<_, anyhow::Error>(());
                }
                let id = AttemptId::new(round, item_id, now);
                let user = format!("bench-user-{n}");
                let r = sale.reserve(&id, &user, 1, unix_ms(), "", None).await?;
                anyhow::ensure!(
                    matches!(r.outcome, ReserveOutcome::Reserved { .. }),
                    "reserve: {r:?}"
                );
                let msg = OrderMessage {
                    attempt_id: id.to_string(),
                    round_id: round,
                    item_id,
                    user_id: user,
                    qty: 1,
                    unit_price_cents: 100,
                    reserved_at_ms: now,
                };
                p.publish(&msg).await.context("publishing")?;
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t??;
    }
    let publish_seconds = pub_start.elapsed().as_secs_f64();

    let w = OrderWriter::new(lc, WriterHooks::default());
    let stop = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn(w.run(stop.clone()));
    let deadline = start + Duration::from_secs(120);
    let mut written = 0;
    while Instant::now() < deadline {
        written = count(&db, round).await?;
        if written >= opts.rows {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    delete_topology(&cfg.rabbitmq.url, &topology).await;
    let mut keys = sale.connection();
    let gone: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", cfg.redis.key_prefix))
        .query_async(&mut keys)
        .await
        .unwrap_or_default();
    if !gone.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(gone).query_async(&mut keys).await;
    }
    anyhow::ensure!(
        written == opts.rows,
        "the writer wrote {written} of {} orders in time",
        opts.rows
    );
    Ok(OrdersReport {
        mode: "writer".into(),
        rows: opts.rows,
        batch: opts.batch,
        seconds: secs,
        rows_per_sec: opts.rows as f64 / secs,
        publish_seconds: Some(publish_seconds),
    })
}

/// Removes an order queue and the queues around it (dead letters, retry
/// tiers, expiry), as the default configuration names them.
pub async fn delete_queue(amqp_url: &str, queue: &str) {
    let mut cfg = Config::default();
    cfg.rabbitmq.queue = queue.to_owned();
    delete_topology(amqp_url, &Topology::from_config(&cfg)).await;
}

/// Removes every queue of `topology`.
pub async fn delete_topology(amqp_url: &str, topology: &Topology) {
    use lapin::{Connection, ConnectionProperties, options::QueueDeleteOptions};
    if let Ok(conn) = Connection::connect(amqp_url, ConnectionProperties::default()).await
        && let Ok(ch) = conn.create_channel().await
    {
        for q in topology.all() {
            let _ = ch
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
}
