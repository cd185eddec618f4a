//! The order writer: redelivery after a crash between commit and ack.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::FutureExt;
use seckill_backend::{auth::Role, queue::WriterHooks};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, TestOptions, eventually, item};

#[tokio::test]
async fn crash_after_commit_before_ack_writes_no_duplicate() {
    let app = TestApp::spawn_with(TestOptions {
        writer: false,
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(5, 1)]), -1_000, 3_600_000).await;
    let t = app.token("henry", Role::Buyer);
    let (s, v) = app.buy(round, items[0], &t, 1).await;
    assert_eq!(s, 202);
    let attempt = v["attempt_id"].as_str().unwrap().to_owned();

    // First writer: commits, then "crashes" before acking.
    let (committed_tx, committed_rx) = tokio::sync::oneshot::channel::<()>();
    let committed_tx = Arc::new(std::sync::Mutex::new(Some(committed_tx)));
    let crashed = Arc::new(AtomicBool::new(false));
    let mut w1 = app.order_writer();
    w1.hooks = WriterHooks {
        after_commit: Some(Arc::new(move || {
            crashed.store(true, Ordering::SeqCst);
            if let Some(tx) = committed_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            futures::future::pending::<()>().boxed()
        })),
    };
    let crashed_writer = tokio::spawn(w1.run(CancellationToken::new()));
    tokio::time::timeout(Duration::from_secs(20), committed_rx)
        .await
        .expect("writer committed")
        .unwrap();
    assert_eq!(app.order_count().await, 1);
    crashed_writer.abort();
    let _ = crashed_writer.await;

    // Restarted writer gets the redelivery.
    let stop = CancellationToken::new();
    let w2 = tokio::spawn(app.order_writer().run(stop.clone()));
    let v = app.poll_final(&attempt, &t).await;
    assert_eq!(v["status"], "ordered");
    // The redelivered message was acked: the queue drains.
    eventually(Duration::from_secs(10), || async {
        let n = crate::common::queue_depth(&crate::helpers::amqp_url(), &app.config.rabbitmq.queue)
            .await;
        (n == 0).then_some(())
    })
    .await;
    assert_eq!(app.order_count().await, 1);
    assert_eq!(app.counters(round, items[0]).await, (5, 4, 1, 0));
    stop.cancel();
    w2.await.unwrap();
    app.teardown().await;
}

#[tokio::test]
async fn user_ids_with_quotes_and_backslashes_are_stored_verbatim_postgres() {
    use sea_orm::EntityTrait;
    use seckill_backend::store::entities::order;
    let app = TestApp::spawn_with(TestOptions {
        db: crate::helpers::Db::Postgres,
        ..Default::default()
    })
    .await;
    let (round, items) = app.open_round(json!([item(5, 1)]), -1_000, 3_600_000).await;
    let subs = [
        r"o'brien",
        r"back\slash",
        r#"quo"te'); DROP TABLE orders; --"#,
        "ünï €",
    ];
    let mut ids = Vec::new();
    for sub in subs {
        let t = app.token(sub, Role::Buyer);
        let (s, v) = app.buy(round, items[0], &t, 1).await;
        assert_eq!(s, 202, "{sub}: {v}");
        let id = v["attempt_id"].as_str().unwrap().to_owned();
        assert_eq!(app.poll_final(&id, &t).await["status"], "ordered");
        ids.push((sub, id));
    }
    for (sub, id) in ids {
        let o = order::Entity::find_by_id(id)
            .one(&app.state.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(o.user_id, sub);
    }
    assert_eq!(app.order_count().await, 4);
    app.teardown().await;
}
