//! `GET /api/openapi.json` from a running backend: an OpenAPI 3.1 document
//! describing exactly the routes the router serves (the route table's list,
//! and every described path probed with every method: the described ones
//! are routed, the others answer 405), every `$ref` resolving, and the
//! error code schema listing exactly `seckill_proto::errors::CODES`.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode, redirect::Policy};
use serde_json::Value;

use crate::helpers::TestApp;

/// Methods a probe tries on every described path.
const PROBED: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn described(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths object");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// A concrete path for a template: every `{param}` becomes `1`.
fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in template.chars() {
        match c {
            '{' => in_param = true,
            '}' => {
                in_param = false;
                out.push('1');
            }
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_describes_exactly_the_routes_served() {
    let app = TestApp::spawn().await;
    let resp = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = resp.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );

    // The route table's list and the document agree both ways.
    let served: BTreeSet<(String, String)> = seckill_backend::routes::served_routes()
        .into_iter()
        .collect();
    let doc_routes = described(&doc);
    let undescribed: Vec<_> = served.difference(&doc_routes).collect();
    let unserved: Vec<_> = doc_routes.difference(&served).collect();
    assert!(
        undescribed.is_empty(),
        "served, not described: {undescribed:?}"
    );
    assert!(unserved.is_empty(), "described, not served: {unserved:?}");
    for must in [
        ("GET", "/api/openapi.json"),
        ("POST", "/api/rounds/{round_id}/items/{item_id}/buy"),
        ("POST", "/admin/rounds"),
        ("GET", "/admin/rounds/{round_id}/events"),
        ("GET", "/admin/console/"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
    ] {
        assert!(
            doc_routes.contains(&(must.0.to_owned(), must.1.to_owned())),
            "{must:?} is not described"
        );
    }

    // The router itself: a described method is routed on its path (never
    // 405), any other method answers 405, which only a routed path does.
    let probe = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let paths: BTreeSet<&String> = doc_routes.iter().map(|(_, p)| p).collect();
    for path in paths {
        for m in PROBED {
            let status = probe
                .request(
                    Method::from_bytes(m.as_bytes()).unwrap(),
                    app.url(&concrete(path)),
                )
                .send()
                .await
                .unwrap()
                .status();
            if doc_routes.contains(&(m.to_owned(), path.clone())) {
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
            }
        }
    }

    // Protected operations name the bearer scheme, which is defined.
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    let buy = &doc["paths"]["/api/rounds/{round_id}/items/{item_id}/buy"]["post"];
    assert!(buy["security"][0].get("bearer").is_some(), "{buy}");
    assert!(doc["paths"]["/admin/rounds"]["post"]["requestBody"].is_object());

    // Every reference resolves.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(schemas.contains_key(name), "{r} does not resolve");
    }

    // The error body's codes are exactly the contract's.
    assert_eq!(
        schemas["ErrorBody"]["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorCode"
    );
    let listed: BTreeSet<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode is an enum")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let defined: BTreeSet<&str> = seckill_proto::errors::CODES
        .iter()
        .map(|(c, _)| *c)
        .collect();
    assert_eq!(listed, defined);
    assert_eq!(
        schemas["ErrorCode"]["enum"].as_array().unwrap().len(),
        defined.len()
    );
    app.teardown().await;
}
