//! `lua/redis/lease.lua` on its own, through the edge's `LeaseClient`: the
//! pool never hands out more than the stock allows; expired leases come
//! back less what their node spent; cancelled units come back; a leaving
//! node hands everything back.

use std::time::Duration;

use seckill_edge::permits::{LeaseClient, LeaseReply, Report};

use crate::helpers::*;

const TTL: Duration = Duration::from_secs(30);

async fn set_stock(prefix: &str, available: i64, reserved: i64, sold: i64) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:{{r1:i1}}:stock"))
        .arg("total")
        .arg(available + reserved + sold)
        .arg("available")
        .arg(available)
        .arg("reserved")
        .arg(reserved)
        .arg("sold")
        .arg(sold)
        .query_async(&mut c)
        .await
        .unwrap();
}

fn granted(r: LeaseReply) -> (i64, i64, bool) {
    match r {
        LeaseReply::Granted {
            granted,
            pool,
            void,
            ..
        } => (granted, pool, void),
        LeaseReply::Unknown => panic!("item unknown"),
    }
}

fn report(unused: i64, spent: i64) -> Report {
    Report {
        unused,
        spent,
        ..Report::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_stay_within_stock_and_come_back() {
    let prefix = format!("tk{}", unique());
    let a = LeaseClient::new(&redis_url(), &prefix, "a").unwrap();
    let b = LeaseClient::new(&redis_url(), &prefix, "b").unwrap();
    let item = (1, 1);
    assert_eq!(
        a.lease(item, 5, &Report::default(), TTL, false)
            .await
            .unwrap(),
        LeaseReply::Unknown
    );
    set_stock(&prefix, 12, 0, 0).await;

    // 12 units: 5 + 5 + 2, then nothing.
    assert_eq!(
        granted(
            a.lease(item, 5, &Report::default(), TTL, false)
                .await
                .unwrap()
        ),
        (5, 7, false)
    );
    assert_eq!(
        granted(
            b.lease(item, 5, &Report::default(), TTL, false)
                .await
                .unwrap()
        ),
        (5, 2, false)
    );
    assert_eq!(
        granted(b.lease(item, 5, &report(0, 0), TTL, false).await.unwrap()),
        (2, 0, false)
    );
    assert_eq!(
        granted(a.lease(item, 5, &report(5, 0), TTL, false).await.unwrap()),
        (0, 0, false)
    );

    // B sold 7 (the backend moved them to reserved), and reports it.
    set_stock(&prefix, 5, 7, 0).await;
    assert_eq!(
        granted(b.lease(item, 5, &report(0, 7), TTL, false).await.unwrap()),
        (0, 0, false)
    );

    // An order is cancelled: one unit back in `available`, one permit back.
    set_stock(&prefix, 6, 6, 0).await;
    assert_eq!(
        granted(b.lease(item, 5, &report(0, 0), TTL, false).await.unwrap()),
        (1, 0, false)
    );

    // A sells 2 without reporting, then dies: its lease expires and the
    // pool gets back its 5 less the 2 the stock shows were sold.
    set_stock(&prefix, 4, 8, 0).await;
    assert_eq!(
        granted(
            a.lease(item, 0, &report(5, 0), Duration::from_millis(50), false)
                .await
                .unwrap()
        ),
        (0, 0, false)
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    // B (holding the 1 from the cancellation, spent it: reports it).
    set_stock(&prefix, 3, 9, 0).await;
    let (g, pool, _) = granted(b.lease(item, 5, &report(0, 1), TTL, false).await.unwrap());
    assert_eq!((g, pool), (3, 0), "A's 3 unsold permits, and no more");

    // A comes back: its old permits are void.
    let (_, _, void) = granted(a.lease(item, 5, &report(3, 0), TTL, false).await.unwrap());
    assert!(void);

    // B leaves and hands its 3 back.
    let (g, pool, _) = granted(b.lease(item, 0, &report(3, 0), TTL, true).await.unwrap());
    assert_eq!((g, pool), (0, 3));
    cleanup_prefix(&prefix).await;
}
