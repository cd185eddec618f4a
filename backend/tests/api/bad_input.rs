//! Bad input gets its documented error and changes no counter.

use seckill_backend::auth::{Role, TokenKeys};
use serde_json::{Value, json};

use crate::helpers::{TestApp, item};

#[tokio::test]
async fn bad_requests_get_their_errors_and_change_nothing() {
    let app = TestApp::spawn().await;
    let (round, items) = app
        .open_round(json!([item(10, 2)]), -1_000, 3_600_000)
        .await;
    let item_id = items[0];
    let t = app.token("mallory", Role::Buyer);
    let path = format!("/api/rounds/{round}/items/{item_id}/buy");

    let raw = |body: &'static str, ctype: Option<&'static str>| {
        let mut r = app.client.post(app.url(&path)).bearer_auth(&t).body(body);
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        r.send()
    };
    let check = |r: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(r.status().as_u16(), status);
        let v: Value = r.json().await.expect("JSON error body");
        assert_eq!(v["error"], code, "{v}");
        assert!(v["message"].is_string());
    };

    check(
        raw("{\"qty\":", Some("application/json")).await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    check(
        raw("[1,2]", Some("application/json")).await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    for q in ["0", "-1", "1000000000000000000000", "1.5", "\"one\"", "101"] {
        let body: &'static str = Box::leak(format!("{{\"qty\":{q}}}").into_boxed_str());
        check(
            raw(body, Some("application/json")).await.unwrap(),
            400,
            "bad_request",
        )
        .await;
    }
    check(
        raw("{\"qty\":1}", Some("text/plain")).await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    check(
        raw("{\"qty\":1}", None).await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    let big: &'static str =
        Box::leak(format!("{{\"qty\":1,\"pad\":\"{}\"}}", "x".repeat(64 * 1024)).into_boxed_str());
    check(
        raw(big, Some("application/json")).await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;

    // Unknown or malformed ids.
    for p in [
        format!("/api/rounds/{round}/items/999999/buy"),
        format!("/api/rounds/999999/items/{item_id}/buy"),
        format!("/api/rounds/abc/items/{item_id}/buy"),
        format!("/api/rounds/{round}/items/-1/buy"),
        "/api/nowhere".to_string(),
    ] {
        let r = app.post_json(&p, &t, Some(json!({"qty": 1}))).await;
        check(r, 404, "not_found").await;
    }

    // Tokens: none, forged, expired, garbage.
    let no_token = app
        .client
        .post(app.url(&path))
        .json(&json!({"qty":1}))
        .send()
        .await
        .unwrap();
    check(no_token, 401, "unauthorized").await;
    let forged =
        TokenKeys::new(b"some-other-secret-entirely", 0).mint("mallory", Role::Buyer, 3600);
    check(
        app.post_json(&path, &forged, Some(json!({"qty":1}))).await,
        401,
        "unauthorized",
    )
    .await;
    let expired = app.state.tokens.mint("mallory", Role::Buyer, -3600);
    check(
        app.post_json(&path, &expired, Some(json!({"qty":1}))).await,
        401,
        "unauthorized",
    )
    .await;
    check(
        app.post_json(&path, "not.a.token", Some(json!({"qty":1})))
            .await,
        401,
        "unauthorized",
    )
    .await;

    // Bad idempotency key.
    let r = app
        .client
        .post(app.url(&path))
        .bearer_auth(&t)
        .header("idempotency-key", "k".repeat(65))
        .json(&json!({"qty": 1}))
        .send()
        .await
        .unwrap();
    check(r, 400, "bad_request").await;

    assert_eq!(app.counters(round, item_id).await, (10, 10, 0, 0));
    assert_eq!(app.order_count().await, 0);

    // Someone else's attempt is indistinguishable from an unknown one.
    let owner = app.token("olivia", Role::Buyer);
    let (s, v) = app.buy(round, item_id, &owner, 1).await;
    assert_eq!(s, 202);
    let id = v["attempt_id"].as_str().unwrap();
    let (s, v) = app.get(&format!("/api/attempts/{id}"), &t).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")));
    let (s, _) = app.get("/api/attempts/not-an-id", &t).await;
    assert_eq!(s, 404);
    let (s, _) = app.get(&format!("/api/attempts/{id}"), &owner).await;
    assert_eq!(s, 200);
    assert_eq!(app.counters(round, item_id).await, (10, 9, 1, 0));
    app.teardown().await;
}
