//! Rounds: approval by a different person, visibility, roles, counters.

use seckill_backend::auth::Role;
use serde_json::json;

use crate::helpers::{TestApp, item};

#[tokio::test]
async fn approval_needs_a_different_approver_and_gates_the_sale() {
    let app = TestApp::spawn().await;
    let round = app
        .create_round(json!([item(5, 1)]), -1_000, 3_600_000)
        .await;
    let id = round["id"].as_i64().unwrap();
    let item_id = round["items"][0]["id"].as_i64().unwrap();
    assert_eq!(round["status"], "draft");

    let buyer = app.token("bea", Role::Buyer);
    // Not approved: invisible and unbuyable.
    let (s, v) = app.get("/api/rounds", &buyer).await;
    assert_eq!(s, 200);
    assert!(
        v["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["id"] != id)
    );
    let (s, v) = app.buy(id, item_id, &buyer, 1).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")));

    // A buyer cannot use admin paths.
    let r = app
        .post_json(&format!("/admin/rounds/{id}/submit"), &buyer, None)
        .await;
    assert_eq!(r.status(), 403);
    let (s, _) = app.get(&format!("/admin/rounds/{id}"), &buyer).await;
    assert_eq!(s, 403);

    // The submitter, even holding an approver token, cannot approve.
    let sub_as_approver = app.token("operator-1", Role::Approver);
    let r = app
        .post_json(
            &format!("/admin/rounds/{id}/approve"),
            &sub_as_approver,
            None,
        )
        .await;
    assert_eq!(r.status(), 409, "a draft cannot be approved");
    let op = app.token("operator-1", Role::Operator);
    let r = app
        .post_json(&format!("/admin/rounds/{id}/submit"), &op, None)
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .post_json(
            &format!("/admin/rounds/{id}/approve"),
            &sub_as_approver,
            None,
        )
        .await;
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "forbidden");
    // An operator cannot approve at all.
    let other_op = app.token("operator-2", Role::Operator);
    let r = app
        .post_json(&format!("/admin/rounds/{id}/approve"), &other_op, None)
        .await;
    assert_eq!(r.status(), 403);

    let (s, v) = app.buy(id, item_id, &buyer, 1).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("not_found")),
        "submitted is not approved"
    );

    let approver = app.token("approver-9", Role::Approver);
    let r = app
        .post_json(&format!("/admin/rounds/{id}/approve"), &approver, None)
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "approved");
    assert_eq!(v["reviewed_by"], "approver-9");
    // Approving twice is a conflict, not a second preheat.
    let r = app
        .post_json(&format!("/admin/rounds/{id}/approve"), &approver, None)
        .await;
    assert_eq!(r.status(), 409);

    // Visible, rendered, buyable.
    let v = crate::helpers::eventually(std::time::Duration::from_secs(5), || async {
        let (_, v) = app.get("/api/rounds", &buyer).await;
        v["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id)
            .then_some(v)
    })
    .await;
    let r = v["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap();
    assert_eq!(r["items"][0]["stock"], 5);
    assert!(r["items"][0].get("created_by").is_none());
    let page = app
        .config
        .pages
        .dir
        .join(format!("sale/{id}/{item_id}/index.html"));
    let html = std::fs::read_to_string(&page).expect("sale page rendered");
    assert!(html.contains("Phone"));
    assert!(app.config.pages.dir.join("assets/sale.js").exists());

    let (s, _) = app.buy(id, item_id, &buyer, 1).await;
    assert_eq!(s, 202);
    let (s, v) = app
        .get(
            &format!("/admin/rounds/{id}/items/{item_id}/stock"),
            &approver,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            v["available"].as_i64(),
            v["reserved"].as_i64(),
            v["sold"].as_i64()
        ),
        (Some(4), Some(1), Some(0))
    );
    let (s, _) = app
        .get(&format!("/admin/rounds/{id}/items/{item_id}/stock"), &buyer)
        .await;
    assert_eq!(s, 403);
    app.teardown().await;
}

#[tokio::test]
async fn rejected_rounds_stay_closed_and_bad_rounds_are_refused() {
    let app = TestApp::spawn().await;
    let round = app
        .create_round(json!([item(5, 1)]), -1_000, 3_600_000)
        .await;
    let id = round["id"].as_i64().unwrap();
    let op = app.token("operator-1", Role::Operator);
    let approver = app.token("approver-1", Role::Approver);
    app.post_json(&format!("/admin/rounds/{id}/submit"), &op, None)
        .await;
    let r = app
        .post_json(
            &format!("/admin/rounds/{id}/reject"),
            &approver,
            Some(json!({"reason": "price too low"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["status"].as_str(), v["reject_reason"].as_str()),
        (Some("rejected"), Some("price too low"))
    );
    let buyer = app.token("b", Role::Buyer);
    let (s, _) = app
        .buy(id, round["items"][0]["id"].as_i64().unwrap(), &buyer, 1)
        .await;
    assert_eq!(s, 404);

    for bad in [
        json!({"name": "x", "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2025-01-01T00:00:00Z", "items": [item(1, 1)]}),
        json!({"name": "x", "starts_at": "yesterday", "ends_at": "2027-01-01T00:00:00Z", "items": [item(1, 1)]}),
        json!({"name": "x", "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2027-01-01T00:00:00Z", "items": []}),
        json!({"name": "x", "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2027-01-01T00:00:00Z", "items": [item(0, 1)]}),
    ] {
        let r = app.post_json("/admin/rounds", &op, Some(bad)).await;
        assert_eq!(r.status(), 400);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], "bad_request");
    }
    app.teardown().await;
}

#[tokio::test]
async fn the_metrics_show_each_open_items_counters() {
    let app = TestApp::spawn().await;
    // An unusual stock, so the lines are this test's own.
    let (round, items) = app
        .open_round(json!([item(37, 2)]), -1_000, 3_600_000)
        .await;
    let t = app.token("gauged", Role::Buyer);
    let (s, v) = app.buy(round, items[0], &t, 2).await;
    assert_eq!(s, 202, "{v}");
    let metrics = reqwest::get(format!("http://{}/metrics", app.metrics_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |state: &str, units: i64| {
        format!(
            r#"seckill_item_units{{round_id="{round}",item_id="{}",state="{state}"}} {units}"#,
            items[0]
        )
    };
    for want in [
        line("total", 37),
        line("available", 35),
        line("reserved", 2),
        line("sold", 0),
    ] {
        assert!(
            metrics.lines().any(|l| l == want),
            "{want} missing:\n{metrics}"
        );
    }
    app.teardown().await;
}

#[tokio::test]
async fn the_admission_window_is_stored_returned_preheated_and_bounded() {
    use sea_orm::{EntityTrait, PaginatorTrait};
    use seckill_backend::store::entities::round;

    let app = TestApp::spawn().await;
    let op = app.token("operator-1", Role::Operator);
    let ap = app.token("approver-1", Role::Approver);
    let now = app.now_ms();
    let ts = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let body = |window: Option<i64>| {
        let mut b = json!({
            "name": "windowed",
            "starts_at": ts(now - 1_000),
            "ends_at": ts(now + 3_599_000),
            "items": [item(3, 1)],
        });
        if let Some(w) = window {
            b["admission_window_ms"] = json!(w);
        }
        b
    };

    // Without one: the default.
    let r = app.post_json("/admin/rounds", &op, Some(body(None))).await;
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["admission_window_ms"], 1_000);

    // Refused, and nothing created: out of bounds, or not shorter than the
    // round (an hour).
    let count = || async { round::Entity::find().count(&app.state.db).await.unwrap() };
    let before = count().await;
    for bad in [-1, 60_001, 3_600_000] {
        let r = app
            .post_json("/admin/rounds", &op, Some(body(Some(bad))))
            .await;
        assert_eq!(r.status(), 400, "window {bad}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], "bad_request");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("admission_window_ms"),
            "{v}"
        );
    }
    let r = app
        .post_json(
            "/admin/rounds",
            &op,
            Some(
                json!({"name": "x", "starts_at": ts(now), "ends_at": ts(now + 10_000),
                "items": [item(1, 1)], "admission_window_ms": "soon"}),
            ),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(count().await, before, "a refused round changes nothing");

    // Given: stored, returned everywhere, preheated beside the start.
    let r = app
        .post_json("/admin/rounds", &op, Some(body(Some(2_500))))
        .await;
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    let id = v["id"].as_i64().unwrap();
    let item_id = v["items"][0]["id"].as_i64().unwrap();
    assert_eq!(v["admission_window_ms"], 2_500);
    for step in ["submit", "approve"] {
        let token = if step == "submit" { &op } else { &ap };
        let r = app
            .post_json(&format!("/admin/rounds/{id}/{step}"), token, None)
            .await;
        assert_eq!(r.status(), 200, "{step}");
    }
    let (s, v) = app.get(&format!("/admin/rounds/{id}"), &op).await;
    assert_eq!((s, v["admission_window_ms"].as_i64()), (200, Some(2_500)));
    let buyer = app.token("viewer", Role::Buyer);
    let (s, v) = app.get("/api/rounds", &buyer).await;
    assert_eq!(s, 200);
    let listed = v["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .expect("the approved round is listed");
    assert_eq!(listed["admission_window_ms"], 2_500);
    let stock = app.state.sale.keys(id, item_id).stock();
    let (window, starts): (i64, i64) = redis::cmd("HMGET")
        .arg(&stock)
        .arg("admission_window_ms")
        .arg("starts_ms")
        .query_async(&mut app.state.sale.connection())
        .await
        .unwrap();
    assert_eq!((window, starts), (2_500, now - 1_000));
    app.teardown().await;
}
