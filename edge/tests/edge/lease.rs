//! `lua/redis/lease.lua` with the backend's `reserve.lua` and `release.lua`,
//! on a real Redis, without HTTP: leases never exceed the units no one
//! holds; a buy takes its units out of its node's lease; a reclaimed lease
//! gives back exactly what it held; permits of a void lease never count;
//! and after every step `pool + leases + reserved + sold == total`.

use std::time::Duration;

use redis::{AsyncCommands, Script, aio::MultiplexedConnection};
use seckill_edge::permits::{LeaseCall, LeaseClient, LeaseReply, Mode};

use crate::helpers::*;

const TTL: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(2);
const ITEM: (i64, i64) = (1, 1);

const RESERVE: &str = concat!(
    include_str!("../../../lua/redis/guard.lua"),
    include_str!("../../../lua/redis/permits.lua"),
    include_str!("../../../lua/redis/reserve.lua")
);
const RELEASE: &str = include_str!("../../../lua/redis/release.lua");

struct Item {
    prefix: String,
    conn: MultiplexedConnection,
    base: String,
    reserve: Script,
    release: Script,
    buyers: u32,
}

impl Item {
    async fn new(total: i64) -> Self {
        let prefix = format!("tk{}", unique());
        let client = redis::Client::open(redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let base = format!("{prefix}:{{r1:i1}}");
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .unwrap();
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .unwrap()
            .trim()
            .to_owned();
        let _: () = redis::cmd("HSET")
            .arg(format!("{base}:stock"))
            .arg(&[
                ("total", total.to_string()),
                ("available", total.to_string()),
                ("reserved", "0".into()),
                ("sold", "0".into()),
                ("starts_ms", "0".into()),
                ("ends_ms", "99999999999999".into()),
                ("per_user_limit", "5".into()),
                ("price_cents", "100".into()),
                ("verified", run_id),
            ])
            .query_async(&mut conn)
            .await
            .unwrap();
        Self {
            prefix,
            conn,
            base,
            reserve: Script::new(RESERVE),
            release: Script::new(RELEASE),
            buyers: 0,
        }
    }

    fn client(&self, node: &str) -> LeaseClient {
        LeaseClient::new(&redis_url(), &self.prefix, node).unwrap()
    }

    /// A buy of `qty` units by a new buyer, naming `(node, generation)`'s
    /// permits (or none): `(outcome, effect, attempt id)`.
    async fn buy(&mut self, qty: i64, permit: Option<(&str, u64)>) -> (String, String, String) {
        self.buyers += 1;
        let id = format!("1-1-{}", self.buyers);
        let b = &self.base;
        let mut inv = self.reserve.key(format!("{b}:stock"));
        inv.key(format!("{b}:buyers"))
            .key(format!("{b}:attempt:{id}"))
            .key(format!("{b}:inflight"))
            .key(format!("{b}:leases"))
            .key(format!("{b}:lease_exp"))
            .key(format!("{b}:lease_gen"))
            .arg(format!("u{}", self.buyers))
            .arg(qty)
            .arg(1_000)
            .arg(&id)
            .arg("")
            .arg(format!("{b}:attempt:"));
        match permit {
            Some((node, g)) => inv.arg(node).arg(g).arg(qty),
            None => inv.arg("").arg(0).arg(0),
        };
        let reply: Vec<String> = inv.invoke_async(&mut self.conn).await.unwrap();
        (
            reply[0].clone(),
            reply.last().unwrap().clone(),
            id.to_string(),
        )
    }

    /// Cancels an attempt: its units go back to `available`.
    async fn cancel(&mut self, id: &str) {
        let b = &self.base;
        let r: String = self
            .release
            .key(format!("{b}:stock"))
            .key(format!("{b}:buyers"))
            .key(format!("{b}:attempt:{id}"))
            .key(format!("{b}:inflight"))
            .arg(id)
            .arg("expired")
            .arg(2_000)
            .arg("0")
            .arg("0")
            .invoke_async(&mut self.conn)
            .await
            .unwrap();
        assert_eq!(r, "released");
    }

    /// `(available, reserved, sold, units in leases)`, checking the
    /// invariant on the way.
    async fn counts(&mut self) -> (i64, i64, i64, i64) {
        let b = &self.base;
        let s: Vec<i64> = redis::cmd("HMGET")
            .arg(format!("{b}:stock"))
            .arg(&["total", "available", "reserved", "sold"])
            .query_async(&mut self.conn)
            .await
            .unwrap();
        let leases: std::collections::HashMap<String, i64> =
            self.conn.hgetall(format!("{b}:leases")).await.unwrap();
        let leased: i64 = leases.values().sum();
        assert!(
            leased <= s[1],
            "leases hold {leased}, more than the {} available",
            s[1]
        );
        assert_eq!(s[1] + s[2] + s[3], s[0], "counters add up to the stock");
        (s[1], s[2], s[3], leased)
    }

    async fn cleanup(&self) {
        cleanup_prefix(&self.prefix).await;
    }
}

async fn lease(c: &LeaseClient, mode: Mode, generation: u64, want: i64, ttl: Duration) -> Grant {
    match c
        .lease(
            LeaseCall {
                item: ITEM,
                mode,
                generation,
                want,
            },
            ttl,
            DEADLINE,
        )
        .await
        .unwrap()
    {
        LeaseReply::Granted {
            granted,
            pool,
            generation,
            held,
            ..
        } => Grant {
            granted,
            pool,
            generation,
            held,
        },
        LeaseReply::Unknown => panic!("item unknown"),
    }
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    granted: i64,
    pool: i64,
    generation: u64,
    held: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_stay_within_what_no_one_holds() {
    let mut it = Item::new(12).await;
    let a = it.client("a");
    let b = it.client("b");
    let none = LeaseClient::new(&redis_url(), &format!("{}x", it.prefix), "a").unwrap();
    let r = none
        .lease(
            LeaseCall {
                item: ITEM,
                mode: Mode::Lease,
                generation: 0,
                want: 1,
            },
            TTL,
            DEADLINE,
        )
        .await
        .unwrap();
    assert_eq!(r, LeaseReply::Unknown);

    // 12 units: 5 + 5 + 2, then nothing.
    let ga = lease(&a, Mode::Lease, 0, 5, TTL).await;
    assert_eq!((ga.granted, ga.pool, ga.held), (5, 7, 5));
    assert_ne!(ga.generation, 0);
    let gb = lease(&b, Mode::Lease, 0, 5, TTL).await;
    assert_eq!((gb.granted, gb.pool), (5, 2));
    assert_ne!(
        gb.generation, ga.generation,
        "every lease has its own generation"
    );
    let gb2 = lease(&b, Mode::Lease, gb.generation, 5, TTL).await;
    assert_eq!((gb2.granted, gb2.pool, gb2.held), (2, 0, 7));
    assert_eq!(gb2.generation, gb.generation, "the lease continues");
    let ga2 = lease(&a, Mode::Lease, ga.generation, 5, TTL).await;
    assert_eq!((ga2.granted, ga2.pool), (0, 0));
    assert_eq!(it.counts().await, (12, 0, 0, 12));

    // A buy with A's permits takes them out of A's lease.
    let (outcome, effect, first) = it.buy(2, Some(("a", ga.generation))).await;
    assert_eq!((outcome.as_str(), effect.as_str()), ("reserved", "spent"));
    assert_eq!(it.counts().await, (10, 2, 0, 10));
    assert_eq!(lease(&a, Mode::Lease, ga.generation, 0, TTL).await.held, 3);

    // Without a permit, with every free unit leased: held, nothing moves.
    let (outcome, effect, _) = it.buy(1, None).await;
    assert_eq!((outcome.as_str(), effect.as_str()), ("held", ""));
    // A permit of an older generation is void: treated as none.
    let (outcome, effect, _) = it.buy(1, Some(("a", ga.generation - 1))).await;
    assert_eq!((outcome.as_str(), effect.as_str()), ("held", "void"));
    // Naming more units than the lease holds is void too.
    let (outcome, effect, _) = it.buy(4, Some(("a", ga.generation))).await;
    assert_eq!((outcome.as_str(), effect.as_str()), ("held", "void"));
    assert_eq!(it.counts().await, (10, 2, 0, 10));

    // A cancelled order's units are free at once: a buy without permit
    // takes them from the pool.
    it.cancel(&first).await;
    assert_eq!(it.counts().await, (12, 0, 0, 10));
    let (outcome, effect, _) = it.buy(2, None).await;
    assert_eq!((outcome.as_str(), effect.as_str()), ("reserved", ""));
    assert_eq!(it.counts().await, (10, 2, 0, 10));

    // A refusal before any unit moves keeps the permit.
    let (outcome, effect, _) = it.buy(6, Some(("a", ga.generation))).await;
    assert_eq!((outcome.as_str(), effect.as_str()), ("limit", "kept"));

    // B resyncs: its 7 go back to the pool, and it leases anew.
    let gb3 = lease(&b, Mode::Resync, 0, 4, TTL).await;
    assert_ne!(gb3.generation, gb.generation);
    assert_eq!((gb3.granted, gb3.held, gb3.pool), (4, 4, 3));
    // B's old permits no longer count.
    let (outcome, effect, _) = it.buy(1, Some(("b", gb.generation))).await;
    assert_eq!((outcome.as_str(), effect.as_str()), ("reserved", "void"));
    assert_eq!(it.counts().await, (9, 3, 0, 7));

    // B leaves: everything it holds is free again.
    let gone = lease(&b, Mode::Release, gb3.generation, 0, TTL).await;
    assert_eq!((gone.held, gone.generation), (0, 0));
    assert_eq!(it.counts().await, (9, 3, 0, 3));
    it.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_lease_comes_back_exactly() {
    let mut it = Item::new(10).await;
    let a = it.client("a");
    let b = it.client("b");
    // A holds 5 with a short lease and forwards 2 buys; one lands before A
    // dies, the other after its lease expired.
    let ga = lease(&a, Mode::Lease, 0, 5, Duration::from_millis(300)).await;
    let gb = lease(&b, Mode::Lease, 0, 5, TTL).await;
    assert_eq!(gb.pool, 0);
    let (outcome, effect, _) = it.buy(1, Some(("a", ga.generation))).await;
    assert_eq!((outcome.as_str(), effect.as_str()), ("reserved", "spent"));
    // A is gone; once its lease expires its 4 unused units are free, not
    // one more or less.
    let free = eventually(Duration::from_secs(5), || {
        let b = b.clone();
        async move {
            let g = lease(&b, Mode::Lease, gb.generation, 0, TTL).await;
            (g.pool == 4).then_some(g)
        }
    })
    .await;
    assert_eq!(free.held, 5);
    assert_eq!(it.counts().await, (9, 1, 0, 5));
    // A's second buy arrives late: its lease is gone, so it takes a unit
    // from the pool like a buy without permit.
    let (outcome, effect, _) = it.buy(1, Some(("a", ga.generation))).await;
    assert_eq!((outcome.as_str(), effect.as_str()), ("reserved", "void"));
    assert_eq!(it.counts().await, (8, 2, 0, 5));
    // B sells its 5; the 3 left are leased and sold.
    for _ in 0..5 {
        let (o, e, _) = it.buy(1, Some(("b", gb.generation))).await;
        assert_eq!((o.as_str(), e.as_str()), ("reserved", "spent"));
    }
    let g = lease(&b, Mode::Lease, gb.generation, 10, TTL).await;
    assert_eq!((g.granted, g.pool), (3, 0));
    assert_eq!(g.generation, gb.generation, "an emptied lease continues");
    for _ in 0..3 {
        let (o, _, _) = it.buy(1, Some(("b", g.generation))).await;
        assert_eq!(o, "reserved");
    }
    assert_eq!(it.counts().await, (0, 10, 0, 0));
    let (o, e, _) = it.buy(1, Some(("b", g.generation))).await;
    assert_eq!((o.as_str(), e.as_str()), ("sold_out", "void"));
    it.cleanup().await;
}
