//! Request bodies, the normalised `$uri`, host-given modules and the log
//! phase, as OpenResty scripts use them.

mod common;

use std::sync::Arc;

use common::{access, body, node, node_with};
use nginx_compat::{Module, Request, Scripts, UriError};

#[tokio::test]
async fn the_body_is_seen_after_read_body() {
    let n = node(
        r#"
        local before = tostring(ngx.req.get_body_data())
        ngx.req.read_body()
        local data = ngx.req.get_body_data()
        local qty = data and require("cjson").decode(data).qty
        ngx.say(before, "|", tostring(data), "|", tostring(qty), "|", tostring(ngx.req.get_body_data(3)))
        ngx.say(tostring(ngx.req.get_body_file()))
        "#,
        &[],
    );
    let req = Request::new("POST", "/buy").with_body(&b"{\"qty\":3}"[..]);
    assert_eq!(
        body(&access(&n.vm, req).await),
        "nil|{\"qty\":3}|3|{\"q\nnil\n"
    );
    // No body, or an empty one: nil, as OpenResty gives.
    let none = access(&n.vm, Request::new("GET", "/")).await;
    assert_eq!(body(&none), "nil|nil|nil|nil\nnil\n");
    let empty = access(&n.vm, Request::new("POST", "/").with_body(Vec::new())).await;
    assert_eq!(body(&empty), "nil|nil|nil|nil\nnil\n");
}

#[tokio::test]
async fn post_args_and_discard() {
    let n = node(
        r#"
        local args, err = ngx.req.get_post_args()
        ngx.say(tostring(args), "|", tostring(err))
        ngx.req.read_body()
        args = ngx.req.get_post_args()
        ngx.say(args.qty, "|", args.note, "|", #args.tag)
        ngx.req.discard_body()
        ngx.say(tostring(ngx.req.get_body_data()))
        "#,
        &[],
    );
    let req = Request::new("POST", "/").with_body(&b"qty=2&note=a+b%21&tag=x&tag=y"[..]);
    assert_eq!(
        body(&access(&n.vm, req).await),
        "nil|no request body found\n2|a b!|2\nnil\n"
    );
}

#[tokio::test]
async fn uri_is_normalised_and_request_uri_raw() {
    let n = node(
        r#"ngx.say(ngx.var.uri, "|", ngx.var.request_uri, "|", ngx.var.args)"#,
        &[],
    );
    let req = Request::parse("GET", "/a/./b/../c%20d//e?x=%20").expect("valid");
    assert_eq!(
        body(&access(&n.vm, req).await),
        "/a/c d/e|/a/./b/../c%20d//e?x=%20|x=%20\n"
    );
    let plain = Request::parse("GET", "/api/time").expect("valid");
    assert_eq!(plain.raw_path, None);
    assert_eq!(body(&access(&n.vm, plain).await), "/api/time|/api/time|\n");
    assert_eq!(
        Request::parse("GET", "/a/../../x?q").unwrap_err(),
        UriError::AboveRoot
    );
    assert_eq!(Request::parse("GET", "/a%00").unwrap_err(), UriError::Nul);
    assert_eq!(
        Request::parse("GET", "/%g1").unwrap_err(),
        UriError::BadEscape
    );
}

#[tokio::test]
async fn modules_given_by_the_host_win_over_the_path() {
    let module = |name: &str, src: &str| Module {
        name: name.into(),
        source: Arc::from(src),
        chunk_name: format!("@{name}.lua"),
    };
    let scripts = Scripts {
        modules: vec![
            module(
                "my.answer",
                "local name = ... return { v = 42, name = name }",
            ),
            module("my.broken", "local x = nil\nreturn x.y"),
            module("my.syntax", "return {"),
        ],
        ..Scripts::access(
            r#"
            local a = require "my.answer"
            local ok, err = pcall(require, "my.broken")
            local ok2, err2 = pcall(require, "my.syntax")
            ngx.say(a.v, "|", a.name, "|", tostring(ok), "|", err)
            ngx.say(tostring(ok2), "|", err2)
            "#,
        )
    };
    let n = node_with(scripts, &[]);
    let out = body(&access(&n.vm, Request::new("GET", "/")).await);
    assert!(
        out.starts_with("42|my.answer|false|my.broken.lua:2: attempt to index"),
        "{out}"
    );
    assert!(out.contains("\nfalse|my.syntax.lua:1: "), "{out}");
}

#[tokio::test]
async fn the_log_phase_sees_status_time_ctx_and_vars() {
    let scripts = Scripts {
        log: Some(
            r#"
            local d = ngx.shared.d
            d:set("line", table.concat({ ngx.status, ngx.var.status, ngx.var.request_time,
                ngx.ctx.mark, ngx.var.uri, ngx.var.user_id or "", ngx.var.set_in_access,
                tostring(ngx.req.get_body_data()) }, "|"))
            "#
            .into(),
        ),
        ..Scripts::access(
            r#"
            ngx.ctx.mark = "m"
            ngx.var.set_in_access = "yes"
            ngx.req.read_body()
            if ngx.var.arg_answer then return ngx.exit(429) end
            "#,
        )
    };
    let n = node_with(scripts, &[("d", 1 << 16)]);
    assert!(n.vm.has_log());
    let line = || {
        let d = n.engine.dicts().get("d").expect("dict");
        match d.get(b"line", false).expect("get").expect("set").value {
            nginx_compat::DictValue::Bytes(b) => String::from_utf8(b).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    let req = Request::new("POST", "/a//b")
        .var("user_id", "u-1")
        .with_body(&b"q"[..]);
    let a = access(&n.vm, req).await;
    n.vm.run_log(a.ctx, 202, 0.25).await.expect("log");
    assert_eq!(line(), "202|202|0.250|m|/a/b|u-1|yes|q");

    // Answered by the access phase itself: the log phase runs all the same.
    let a = n.vm.run_access(Request::new("GET", "/?answer=1")).await;
    n.vm.run_log(a.ctx, 429, 0.0004).await.expect("log");
    assert_eq!(line(), "429|429|0.000|m|/||yes|nil");

    let without = node("return", &[]);
    assert!(!without.vm.has_log());
}
