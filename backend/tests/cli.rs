//! The binary's subcommands: `check-config`, `mint-token`, `reconcile`,
//! `dead-letters`, `spool`, `journal`.

use std::process::Command;

mod common;

fn backend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_seckill-backend"))
}

#[test]
fn shipped_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/backend.toml");
    let out = backend().args(["check-config", path]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_configs_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    for (body, needle) in [
        ("[auth]\nsecret = \"short\"\n", "auth.secret"),
        ("[redis]\nurl = \"http://x\"\n", "redis.url"),
        ("[http]\nlisten = \"not an address\"\n", "listen"),
        ("[nope]\nx = 1\n", "nope"),
        ("[writer]\nbatch_size = 0\n", "writer.batch_size"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, body).unwrap();
        let out = backend()
            .arg("check-config")
            .arg(&path)
            .env_remove("SECKILL_CONFIG")
            .env("SECKILL__AUTH__ALLOW_DEV_SECRET", "true")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{body} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{body}: {err}");
    }
    let out = backend()
        .args(["check-config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// The development secret the shipped files and the defaults carry is
/// refused unless `auth.allow_dev_secret` says this is a development
/// machine.
#[test]
fn the_development_secret_needs_the_development_flag() {
    let dir = tempfile::tempdir().unwrap();
    let check = |body: &str, env: &[(&str, &str)]| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, body).unwrap();
        let mut cmd = backend();
        cmd.arg("check-config")
            .arg(&path)
            .env_remove("SECKILL_CONFIG")
            .env_remove("SECKILL__AUTH__SECRET")
            .env_remove("SECKILL__AUTH__ALLOW_DEV_SECRET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dev = "[auth]\nsecret = \"dev-only-secret-change-me-before-a-sale\"\n";
    for (body, env) in [
        ("", &[][..]),
        (dev, &[][..]),
        (dev, &[("SECKILL__AUTH__ALLOW_DEV_SECRET", "false")][..]),
    ] {
        let (ok, err) = check(body, env);
        assert!(!ok, "{body:?} {env:?} was accepted");
        assert!(
            err.contains("auth.secret") && err.contains("auth.allow_dev_secret"),
            "{err}"
        );
        assert!(
            !err.contains("dev-only-secret"),
            "the secret is printed: {err}"
        );
    }
    let allowed = format!("{dev}allow_dev_secret = true\n");
    assert!(check(&allowed, &[]).0);
    assert!(check(dev, &[("SECKILL__AUTH__ALLOW_DEV_SECRET", "true")]).0);
    // A secret of one's own needs no flag.
    assert!(
        check(
            dev,
            &[("SECKILL__AUTH__SECRET", "a-secret-of-our-own-0123")]
        )
        .0
    );
    // The shipped development file sets the flag; without it, it is refused.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/backend.toml");
    let body = std::fs::read_to_string(shipped).unwrap();
    assert!(check(&body, &[]).0);
    assert!(!check(&body, &[("SECKILL__AUTH__ALLOW_DEV_SECRET", "false")]).0);
}

#[test]
fn mint_token_prints_a_verifiable_token() {
    let out = backend()
        .args([
            "mint-token",
            "--sub",
            "alice",
            "--role",
            "approver",
            "--ttl-secs",
            "60",
        ])
        .env("SECKILL__AUTH__SECRET", "cli-test-secret-0123456789")
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let keys = seckill_backend::auth::TokenKeys::new(b"cli-test-secret-0123456789", 0);
    let claims = keys.verify(token.trim()).unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.role, seckill_backend::auth::Role::Approver);
}

/// `reconcile` reports an approved item Redis has no counters for (exit 2),
/// `--repair` rebuilds it from the database, and `dead-letters list` reads
/// an empty dead-letter queue.
#[tokio::test]
async fn reconcile_and_dead_letters_subcommands() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
    use seckill_backend::{
        domain::{NewItem, NewRound, RoundStatus},
        store::{db, entities::round, rounds},
    };
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("o.db").display());
    let prefix = format!("cli{id}");
    let queue = format!("seckill.test.cli.{id}");
    let redis_url = std::env::var("SECKILL_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let amqp_url = std::env::var("SECKILL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());

    let conn = db::connect_and_migrate(&db_url, 1).await.unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let new = NewRound {
        name: "cli".into(),
        starts_at_ms: now,
        ends_at_ms: now + 3_600_000,
        items: vec![NewItem {
            title: "x".into(),
            description: String::new(),
            image_url: String::new(),
            original_price_cents: 2,
            sale_price_cents: 1,
            stock: 7,
            per_user_limit: 1,
        }],
        admission_window_ms: 0,
        pow_difficulty: 0,
    };
    let r = rounds::create(&conn, &new, "op", now).await.unwrap();
    round::Entity::update_many()
        .col_expr(
            round::Column::Status,
            Expr::value(RoundStatus::Approved.as_str()),
        )
        .filter(round::Column::Id.eq(r.round.id))
        .exec(&conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let run = |args: &[&str]| {
        let out = backend()
            .args(args)
            .env_remove("SECKILL_CONFIG")
            .env("SECKILL__AUTH__ALLOW_DEV_SECRET", "true")
            .env("SECKILL__DATABASE__URL", &db_url)
            .env("SECKILL__REDIS__URL", &redis_url)
            .env("SECKILL__REDIS__KEY_PREFIX", &prefix)
            .env("SECKILL__RABBITMQ__URL", &amqp_url)
            .env("SECKILL__RABBITMQ__QUEUE", &queue)
            .env("SECKILL__RABBITMQ__QUEUE_EXPIRES_MS", "900000")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["reconcile"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.contains("redis has no counters"), "{out}");
    let (code, out, err) = run(&["reconcile", "--repair"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"repaired\": 1"), "{out}");
    let (code, out, err) = run(&["reconcile"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"consistent\": true"), "{out}");
    assert!(out.contains("\"available\": 7"), "{out}");
    let (code, out, err) = run(&["dead-letters", "list"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), "[]");
    let (code, _, _) = run(&["dead-letters", "replay"]);
    assert_ne!(code, Some(0), "replay needs --all or ids");

    // Clean up the keys and queues this test made.
    let sale = seckill_backend::store::SaleStore::connect(
        &redis_url,
        &prefix,
        std::time::Duration::from_secs(2),
    )
    .await
    .unwrap();
    common::delete_keys(&sale, &prefix).await;
    common::delete_queues(&amqp_url, &queue).await;
}

#[tokio::test]
async fn spool_and_journal_subcommands() {
    use seckill_backend::{
        durable::{Journal, JournalEntry, Spool},
        queue::OrderMessage,
    };
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let journal_dir = dir.path().join("journal");
    let db_url = format!("sqlite://{}?mode=rwc", dir.path().join("o.db").display());
    let prefix = format!("cli{id}");
    let queue = format!("seckill.test.cli.{id}");
    let redis_url = std::env::var("SECKILL_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let amqp_url = std::env::var("SECKILL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let attempt = format!("1-1-{}", ulid::Ulid::new());
    {
        let s = Spool::open(&spool_dir, 10).await.unwrap();
        let msg = OrderMessage {
            attempt_id: attempt.clone(),
            round_id: 1,
            item_id: 1,
            user_id: "u".into(),
            qty: 1,
            unit_price_cents: 1,
            reserved_at_ms: 1,
        };
        s.append(&msg, 1).await.unwrap();
        let j = Journal::open(&journal_dir).await.unwrap();
        let e = JournalEntry {
            attempt_id: format!("1-1-{}", ulid::Ulid::new()),
            round_id: 1,
            item_id: 1,
            user: "v".into(),
            qty: 1,
            idempotency_key: String::new(),
            arrived_ms: 1,
        };
        j.append(&e, 5).await.unwrap();
    }
    let run = |args: &[&str]| {
        let out = backend()
            .args(args)
            .env_remove("SECKILL_CONFIG")
            .env("SECKILL__AUTH__ALLOW_DEV_SECRET", "true")
            .env("SECKILL__DATABASE__URL", &db_url)
            .env("SECKILL__REDIS__URL", &redis_url)
            .env("SECKILL__REDIS__KEY_PREFIX", &prefix)
            .env("SECKILL__RABBITMQ__URL", &amqp_url)
            .env("SECKILL__RABBITMQ__QUEUE", &queue)
            .env("SECKILL__RABBITMQ__QUEUE_EXPIRES_MS", "900000")
            .env("SECKILL__DURABILITY__SPOOL_DIR", &spool_dir)
            .env("SECKILL__DURABILITY__JOURNAL_DIR", &journal_dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["spool", "list"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("\"depth\": 1") && out.contains(&attempt),
        "{out}"
    );
    // Owned by a running process: drain refuses.
    {
        let _owner = Spool::open(&spool_dir, 10).await.unwrap();
        let (code, out, err) = run(&["spool", "drain"]);
        assert_ne!(code, Some(0), "{out}");
        assert!(err.contains("in use by another process"), "{err}");
    }
    let (code, out, err) = run(&["spool", "drain"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("\"published\": 1") && out.contains("\"left\": 0"),
        "{out}"
    );
    let (code, out, _) = run(&["spool", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("\"depth\": 0"), "{out}");

    let (code, out, err) = run(&["journal", "list"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"depth\": 1"), "{out}");
    // No such item on sale: the replay records the refusal and is done.
    let (code, out, err) = run(&["journal", "replay"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("\"decided\": 1") && out.contains("\"left\": 0"),
        "{out}"
    );

    let sale = seckill_backend::store::SaleStore::connect(
        &redis_url,
        &prefix,
        std::time::Duration::from_secs(2),
    )
    .await
    .unwrap();
    common::delete_keys(&sale, &prefix).await;
    common::delete_queues(&amqp_url, &queue).await;
}
