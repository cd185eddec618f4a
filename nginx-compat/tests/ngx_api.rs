//! The `ngx` API as scripts see it: variables, request edits, answering,
//! phases, time, sleep, and the utility functions.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use common::{T0, access, body, node, node_with, say};
use nginx_compat::{AccessOutcome, Error, Request, Scripts};

#[tokio::test]
async fn variables_reflect_the_request() {
    let n = node(
        r#"
        local v = ngx.var
        ngx.say(v.uri, "|", v.request_uri, "|", v.args, "|", v.request_method)
        ngx.say(v.remote_addr, "|", #v.binary_remote_addr, "|", v.host, "|", v.scheme, "|", v.server_port)
        ngx.say(v.http_user_agent, "|", v.http_x_forwarded_for, "|", tostring(v.http_missing))
        ngx.say(v.arg_item, "|", v.arg_q, "|", tostring(v.arg_none))
        ngx.say(v.cookie_session, "|", tostring(v.cookie_none), "|", v.user_id)
        ngx.say(ngx.req.get_method(), "|", v.request_time)
        local h = ngx.req.get_headers()
        ngx.say(h["user-agent"], "|", h.user_agent, "|", h["User-Agent"], "|", #h.accept)
        local args = ngx.req.get_uri_args()
        ngx.say(args.item, "|", args.q, "|", tostring(args.flag), "|", #args.multi)
        "#,
        &[],
    );
    let req = Request::new("POST", "/api/buy?item=7&q=a+b%21&flag&multi=1&multi=2")
        .header("User-Agent", "test-agent")
        .header("X-Forwarded-For", "10.0.0.1")
        .header("Accept", "a")
        .header("accept", "b")
        .header("Cookie", "theme=dark; session=abc123")
        .var("user_id", "u-42")
        .remote(IpAddr::V6(Ipv6Addr::LOCALHOST));
    let out = body(&access(&n.vm, req).await);
    assert_eq!(
        out,
        "/api/buy|/api/buy?item=7&q=a+b%21&flag&multi=1&multi=2|item=7&q=a+b%21&flag&multi=1&multi=2|POST\n\
         ::1|16|localhost|http|80\n\
         test-agent|10.0.0.1|nil\n\
         7|a+b%21|nil\n\
         abc123|nil|u-42\n\
         POST|0.000\n\
         test-agent|test-agent|test-agent|2\n\
         7|a b!|true|2\n"
    );
}

#[tokio::test]
async fn exit_stops_the_chunk_even_inside_pcall() {
    let n = node(
        r#"
        ngx.header["X-Reason"] = "limited"
        pcall(function() ngx.exit(429) end)
        ngx.shared.d:set("after_exit", true)
        "#,
        &[("d", 1 << 16)],
    );
    let a = access(&n.vm, Request::new("GET", "/")).await;
    assert_eq!(
        a.outcome,
        AccessOutcome::Respond {
            status: 429,
            headers: vec![("X-Reason".into(), "limited".into())],
            body: Vec::new(),
        }
    );
    let d = n.engine.dicts().get("d").expect("dict");
    assert_eq!(d.get(b"after_exit", false), Ok(None));
}

#[tokio::test]
async fn say_and_status_answer_the_request() {
    let n = node(
        r#"
        ngx.status = ngx.HTTP_GONE
        ngx.header.content_type = "application/json"
        ngx.print('{"error":"sold_out"')
        ngx.say("}")
        return ngx.exit(ngx.HTTP_OK)
        "#,
        &[],
    );
    let a = access(&n.vm, Request::new("GET", "/")).await;
    assert_eq!(
        a.outcome,
        AccessOutcome::Respond {
            status: 410,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{\"error\":\"sold_out\"}\n".to_vec(),
        }
    );
}

#[tokio::test]
async fn redirect_and_ok_exit() {
    let n = node(
        r#"
        if ngx.var.arg_go then
            return ngx.redirect("/sale/1")
        end
        ngx.exit(ngx.OK)
        error("not reached")
        "#,
        &[],
    );
    let a = access(&n.vm, Request::new("GET", "/?go=1")).await;
    assert_eq!(
        a.outcome,
        AccessOutcome::Respond {
            status: 302,
            headers: vec![("Location".into(), "/sale/1".into())],
            body: Vec::new(),
        }
    );
    let a = access(&n.vm, Request::new("GET", "/")).await;
    assert!(matches!(a.outcome, AccessOutcome::Continue { .. }));
}

#[tokio::test]
async fn continue_carries_header_edits() {
    let n = node(
        r#"
        ngx.req.set_header("X-User", ngx.var.user_id)
        ngx.req.clear_header("Authorization")
        ngx.header["X-RateLimit-Remaining"] = 3
        assert(ngx.var.http_x_user == "u-1")
        assert(ngx.var.http_authorization == nil)
        "#,
        &[],
    );
    let req = Request::new("GET", "/")
        .header("Authorization", "Bearer t")
        .header("X-User", "forged")
        .var("user_id", "u-1");
    let a = access(&n.vm, req).await;
    assert_eq!(
        a.outcome,
        AccessOutcome::Continue {
            set_headers: vec![("X-User".into(), "u-1".into())],
            cleared_headers: vec!["Authorization".into()],
            response_headers: vec![("X-RateLimit-Remaining".into(), "3".into())],
        }
    );
    assert_eq!(a.ctx.request().header_value("x-user"), Some("u-1"));
}

#[tokio::test]
async fn ctx_survives_into_the_log_phase() {
    let scripts = Scripts {
        log: Some(
            r#"
            local d = ngx.shared.d
            d:set("seen", ngx.ctx.mark)
            d:set("status", ngx.status)
            d:set("request_time", ngx.var.request_time)
            d:set("phase", ngx.get_phase())
            "#
            .into(),
        ),
        ..Scripts::access(r#"ngx.ctx.mark = "m-" .. ngx.var.arg_n"#)
    };
    let n = node_with(scripts, &[("d", 1 << 16)]);
    let a = access(&n.vm, Request::new("GET", "/?n=5")).await;
    n.vm.run_log(a.ctx, 201, 0.1234).await.expect("log");
    let d = n.engine.dicts().get("d").expect("dict");
    let get = |k: &[u8]| d.get(k, false).expect("get").expect("present").value;
    use nginx_compat::DictValue::{Bytes, Number};
    assert_eq!(get(b"seen"), Bytes(b"m-5".to_vec()));
    assert_eq!(get(b"status"), Number(201.0));
    assert_eq!(get(b"request_time"), Bytes(b"0.123".to_vec()));
    assert_eq!(get(b"phase"), Bytes(b"log".to_vec()));
}

#[tokio::test(start_paused = true)]
async fn sleep_suspends_the_request_not_the_vm() {
    let n = node(
        r#"
        local d = ngx.shared.d
        if ngx.var.arg_slow then
            d:rpush("order", "slow-start")
            ngx.sleep(1)
            d:rpush("order", "slow-end")
        else
            d:rpush("order", "fast")
        end
        ngx.say(ngx.var.arg_slow or "fast")
        "#,
        &[("d", 1 << 16)],
    );
    let slow = n.vm.run_access(Request::new("GET", "/?slow=1"));
    // join! polls in order: the slow request starts and suspends in
    // ngx.sleep before the fast one is first polled.
    let fast = n.vm.run_access(Request::new("GET", "/"));
    let (slow, fast) = tokio::join!(slow, fast);
    assert_eq!(body(&slow), "1\n");
    assert_eq!(body(&fast), "fast\n");
    let d = n.engine.dicts().get("d").expect("dict");
    let mut order = Vec::new();
    while let Ok(Some(v)) = d.pop(b"order", true) {
        order.push(v);
    }
    use nginx_compat::DictValue::Bytes;
    assert_eq!(
        order,
        [
            Bytes(b"slow-start".to_vec()),
            Bytes(b"fast".to_vec()),
            Bytes(b"slow-end".to_vec())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn sleep_and_exit_work_inside_user_coroutines() {
    let n = node(
        r#"
        local d = ngx.shared.d
        local gen = coroutine.wrap(function(a)
            local b = coroutine.yield(a + 1)
            ngx.sleep(0.5)
            d:set("after_sleep", b)
            return b * 2
        end)
        d:set("first", gen(1))
        d:set("second", gen(10))
        local co = coroutine.create(function()
            ngx.sleep(0.1)
            ngx.exit(418)
        end)
        coroutine.resume(co)
        d:set("not_reached", true)
        "#,
        &[("d", 1 << 16)],
    );
    let a = access(&n.vm, Request::new("GET", "/")).await;
    assert!(
        matches!(a.outcome, AccessOutcome::Respond { status: 418, .. }),
        "{:?}",
        a.outcome
    );
    let d = n.engine.dicts().get("d").expect("dict");
    let get = |k: &[u8]| d.get(k, false).expect("get").map(|g| g.value);
    use nginx_compat::DictValue::Number;
    assert_eq!(get(b"first"), Some(Number(2.0)));
    assert_eq!(get(b"after_sleep"), Some(Number(10.0)));
    assert_eq!(get(b"second"), Some(Number(20.0)));
    assert_eq!(get(b"not_reached"), None);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_suspended_request_leaves_the_vm_usable() {
    let n = node(
        r#"
        if ngx.var.arg_slow then
            local ok = pcall(ngx.sleep, 10)
            ngx.shared.d:set("resumed_after_drop", true)
        end
        ngx.say("done")
        "#,
        &[("d", 1 << 16)],
    );
    let slow = n.vm.run_access(Request::new("GET", "/?slow=1"));
    let timed_out = tokio::time::timeout(Duration::from_millis(5), slow).await;
    assert!(timed_out.is_err());
    assert_eq!(say(&n.vm).await, "done\n");
    let d = n.engine.dicts().get("d").expect("dict");
    // If the abandoned coroutine ran on, it had no request to act for.
    assert_eq!(d.get(b"resumed_after_drop", false), Ok(None));
}

#[tokio::test]
async fn now_is_cached_until_update_time() {
    let n = node(
        r#"
        local t1 = ngx.now()
        advance(1500)
        local t2 = ngx.now()
        ngx.update_time()
        local t3 = ngx.now()
        ngx.say(t2 - t1, " ", t3 - t1, " ", ngx.time() - math.floor(t1), " ", ngx.today(), " ", ngx.localtime())
        "#,
        &[],
    );
    let clock = n.clock.clone();
    let advance =
        n.vm.lua()
            .create_function(move |_, ms: u64| {
                clock.advance(Duration::from_millis(ms));
                Ok(())
            })
            .expect("fn");
    n.vm.lua().globals().set("advance", advance).expect("set");
    assert_eq!(say(&n.vm).await, "0 1.5 1 2026-01-01 2026-01-01 00:00:01\n");
    assert_eq!(T0.as_secs(), 1_767_225_600);
}

#[tokio::test]
async fn regex_functions() {
    let n = node(
        r#"
        local m = ngx.re.match("item-42 qty=3", [[(\w+)-(?<id>\d+)]], "jo")
        ngx.say(m[0], " ", m[1], " ", m[2], " ", m.id)
        ngx.say(tostring(ngx.re.match("abc", "\\d")))
        local from, to = ngx.re.find("hello WORLD", "world", "i")
        ngx.say(from, " ", to)
        local s, n = ngx.re.gsub("a1b22c333", "[0-9]+", "<$0>")
        ngx.say(s, " ", n)
        s, n = ngx.re.sub("a1b22", "([a-z])([0-9]+)", "${2}$1")
        ngx.say(s, " ", n)
        s = ngx.re.gsub("x=1,y=2", [[(\w)=(\d)]], function(m) return m[2] .. m[1] end)
        ngx.say(s)
        local words = {}
        for m in ngx.re.gmatch("one two  three", [[\S+]]) do words[#words + 1] = m[0] end
        ngx.say(table.concat(words, ","))
        local ctx = { pos = 4 }
        local m2 = ngx.re.match("ab ab", "ab", "", ctx)
        ngx.say(m2[0], " ", ctx.pos)
        local bad, err = ngx.re.match("x", "(?<=a)x")
        ngx.say(tostring(bad), " ", tostring(err ~= nil))
        local m3 = ngx.re.match("a\nb", "^b", "m")
        ngx.say(m3[0])
        local m4 = ngx.re.match("x", "(y)?x")
        ngx.say(tostring(m4[1]))
        "#,
        &[],
    );
    assert_eq!(
        say(&n.vm).await,
        "item-42 item 42 42\nnil\n7 11\na<1>b<22>c<333> 3\n1ab22 1\n1x,2y\none,two,three\nab 6\nnil true\nb\nfalse\n"
    );
}

#[tokio::test]
async fn cjson_encode_decode() {
    let n = node(
        r#"
        local cjson = require "cjson"
        ngx.say(cjson.encode({1, 2, "x/y"}))
        ngx.say(cjson.encode({}))
        ngx.say(cjson.encode(cjson.empty_array), cjson.encode({a = cjson.null}))
        ngx.say(cjson.encode({n = 1.5, t = true}) == '{"n":1.5,"t":true}' or cjson.encode({n = 1.5, t = true}) == '{"t":true,"n":1.5}')
        local v = cjson.decode([=[{"a":[1,2,{"b":null}],"s":"\u00e9"}]=])
        ngx.say(#v.a, " ", v.a[2], " ", tostring(v.a[3].b == cjson.null), " ", v.s)
        local ok = pcall(cjson.decode, "{bad")
        ngx.say(tostring(ok))
        local safe = require "cjson.safe"
        local r, err = safe.decode("{bad")
        ngx.say(tostring(r), " ", tostring(err ~= nil))
        "#,
        &[],
    );
    assert_eq!(
        say(&n.vm).await,
        "[1,2,\"x\\/y\"]\n{}\n[]{\"a\":null}\ntrue\n3 2 true é\nfalse\nnil true\n"
    );
}

#[tokio::test]
async fn cjson_encodes_what_lua_cjson_writes_and_refuses_what_it_refuses() {
    let n = node(
        r##"
        local cjson = require "cjson"
        local safe = require "cjson.safe"
        -- arrays: dense, nested, marked, sparse (as an object), holes
        ngx.say(cjson.encode({{1, {}}, {"a"}, setmetatable({}, cjson.array_mt)}))
        ngx.say(cjson.encode({[1] = "a", [3] = "c"}))
        ngx.say(cjson.encode({[20] = true}))
        ngx.say(cjson.encode(setmetatable({1, 2}, cjson.array_mt)))
        -- numbers: integers, floats, -0, large integral values, keys
        ngx.say(cjson.encode({0, -7, 1.5, -0.0, 1e15, 2^53, 0.1, 1e300}))
        ngx.say(cjson.encode({[2.5] = 1}))
        -- strings: every escape
        ngx.say(cjson.encode("q\"b\\s/n\nr\rt\tb\bf\f\1\127é"))
        -- scalars and sentinels
        ngx.say(cjson.encode(nil), " ", cjson.encode(true), " ", cjson.encode(false),
          " ", cjson.encode(cjson.null), " ", cjson.encode(cjson.empty_array))
        -- refusals: cjson raises, cjson.safe answers nil and the message
        for _, bad in ipairs({ {f = print}, {[true] = 1}, 0/0, 1/0, {coroutine.create(print)} }) do
          local ok, err = pcall(cjson.encode, bad)
          local r, serr = safe.encode(bad)
          ngx.say(tostring(ok), " ", tostring(r), " ", tostring(err == serr), " ", serr)
        end
        local deep = {}
        local t = deep
        for _ = 1, 1100 do t[1] = {}; t = t[1] end
        ngx.say(select(2, safe.encode(deep)))
        -- the stack is left as found: encode inside an expression list
        ngx.say(select("#", cjson.encode({1}), cjson.encode({2})))
        "##,
        &[],
    );
    assert_eq!(
        say(&n.vm).await,
        concat!(
            "[[1,{}],[\"a\"],[]]\n",
            "[\"a\",null,\"c\"]\n",
            "{\"20\":true}\n",
            "[1,2]\n",
            "[0,-7,1.5,0,1000000000000000,9007199254740992,0.1,1e+300]\n",
            "{\"2.5\":1}\n",
            "\"q\\\"b\\\\s\\/n\\nr\\rt\\tb\\bf\\f\\u0001\\u007fé\"\n",
            "null true false null []\n",
            "false nil true Cannot serialise function: type not supported\n",
            "false nil true Cannot serialise table: table key must be a number or string\n",
            "false nil true Cannot serialise number: must not be NaN or Infinity\n",
            "false nil true Cannot serialise number: must not be NaN or Infinity\n",
            "false nil true Cannot serialise thread: type not supported\n",
            "Cannot serialise, excessive nesting (1001)\n",
            "2\n",
        )
    );
}

#[tokio::test]
async fn codecs_and_hashes() {
    let n = node(
        r#"
        ngx.say(ngx.md5("hello"))
        ngx.say(ngx.encode_base64(ngx.md5_bin("hello")))
        ngx.say(ngx.encode_base64(ngx.sha1_bin("abc")))
        ngx.say(ngx.encode_base64(ngx.hmac_sha1("key", "The quick brown fox jumps over the lazy dog")))
        ngx.say(ngx.crc32_short("hello"), " ", ngx.crc32_long("hello"))
        ngx.say(ngx.encode_base64("ab"), " ", ngx.encode_base64("ab", true), " ", ngx.decode_base64("YWI="), " ", tostring(ngx.decode_base64("!!")))
        ngx.say(ngx.escape_uri("a b/c?d=é"), " ", ngx.unescape_uri("a%20b+c%2F"))
        ngx.say(ngx.encode_args({q = "a b"}), " ", ngx.decode_args("x=1&y").x)
        "#,
        &[],
    );
    assert_eq!(
        say(&n.vm).await,
        "5d41402abc4b2a76b9719d911017c592\n\
         XUFAKrxLKna5cZ2REBfFkg==\n\
         qZk+NkcGgWq6PiVxeFDCbJzQ2J0=\n\
         3nybhbi3iqa8ino29wqQcBydtNk=\n\
         907060870 907060870\n\
         YWI= YWI ab nil\n\
         a%20b%2Fc%3Fd%3D%C3%A9 a b c/\n\
         q=a%20b 1\n"
    );
}

#[tokio::test]
async fn ffi_config_and_constants() {
    let n = node(
        r#"
        local ffi = require "ffi"
        ffi.cdef[[ typedef struct { uint32_t a; uint32_t b; } pair_t; ]]
        local p = ffi.new("pair_t", 3, 4)
        ngx.say(p.a + p.b, " ", ffi.sizeof("pair_t"))
        ngx.say(tostring(ngx.config.ngx_lua_version >= 10012), " ", ngx.config.subsystem)
        ngx.say(ngx.HTTP_OK, " ", ngx.HTTP_TOO_MANY_REQUESTS, " ", ngx.HTTP_SERVICE_UNAVAILABLE, " ", ngx.ERR, " ", ngx.OK, " ", ngx.DECLINED)
        ngx.log(ngx.ERR, "logging works: ", 1, " ", true, " ", nil)
        ngx.say(ngx.get_phase(), " ", tostring(ngx.null == require("cjson").null))
        "#,
        &[],
    );
    assert_eq!(
        say(&n.vm).await,
        "7 8\ntrue http\n200 429 503 4 0 -5\naccess true\n"
    );
}

#[tokio::test]
async fn init_runs_once_per_node_and_init_worker_per_vm() {
    let scripts = Scripts {
        init: Some(r#"ngx.shared.d:incr("init", 1, 0); assert(ngx.get_phase() == "init")"#.into()),
        init_worker: Some(
            r#"ngx.shared.d:incr("worker", 1, 0); WORKER_READY = ngx.get_phase() == "init_worker""#
                .into(),
        ),
        ..Scripts::access(r#"ngx.say(tostring(WORKER_READY))"#)
    };
    let n = node_with(scripts, &[("d", 1 << 16)]);
    let _second = n.engine.new_vm().expect("vm");
    assert_eq!(say(&n.vm).await, "true\n");
    let d = n.engine.dicts().get("d").expect("dict");
    use nginx_compat::DictValue::Number;
    assert_eq!(
        d.get(b"init", false).expect("get").map(|g| g.value),
        Some(Number(1.0))
    );
    assert_eq!(
        d.get(b"worker", false).expect("get").map(|g| g.value),
        Some(Number(2.0))
    );
}

#[tokio::test]
async fn errors_reload_and_runtime() {
    let n = node(r#"ngx.say("v1")"#, &[("d", 1 << 16)]);
    n.engine
        .dicts()
        .get("d")
        .expect("dict")
        .incr(b"kept", 1.0, Some(0.0), 0.0)
        .expect("incr");
    // A broken reload is reported; the caller keeps the old engine.
    let err = n
        .engine
        .reload(Scripts::access("this is not lua"))
        .expect_err("syntax error");
    assert!(
        matches!(
            err,
            Error::Load {
                phase: "access",
                ..
            }
        ),
        "{err}"
    );
    let err = n
        .engine
        .reload(Scripts {
            init: Some("error('boom')".into()),
            ..Scripts::access("")
        })
        .expect_err("init error");
    assert!(matches!(err, Error::Load { phase: "init", .. }), "{err}");
    assert_eq!(say(&n.vm).await, "v1\n");
    assert!(Scripts::access("local x = ").check().is_err());
    assert!(
        Scripts {
            log: Some("ngx.ctx.x = 1".into()),
            ..Scripts::access("return")
        }
        .check()
        .is_ok()
    );

    // A good reload keeps the dict contents.
    let reloaded = n
        .engine
        .reload(Scripts::access(
            r#"ngx.say("v2 ", ngx.shared.d:get("kept")) if ngx.var.arg_fail then error("bad") end"#,
        ))
        .expect("reload");
    let vm2 = reloaded.new_vm().expect("vm");
    assert_eq!(say(&vm2).await, "v2 1\n");

    // A runtime error answers 500 and reports the error.
    let a = vm2.run_access(Request::new("GET", "/?fail=1")).await;
    assert!(matches!(
        a.outcome,
        AccessOutcome::Respond { status: 500, .. }
    ));
    assert!(matches!(
        a.error,
        Some(Error::Runtime {
            phase: "access",
            ..
        })
    ));
}

#[test]
fn one_vm_shared_by_threads_keeps_requests_apart() {
    let n = node(
        r#"
        local id = ngx.var.arg_id
        ngx.ctx.id = id
        for i = 1, 50 do
            ngx.sleep(0)
            assert(ngx.ctx.id == id and ngx.var.arg_id == id, "request state mixed up")
        end
        ngx.say(id)
        "#,
        &[],
    );
    let vm = std::sync::Arc::new(n.vm);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let vm = vm.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let reqs = (0..8).map(|i| {
                        let id = format!("{t}-{i}");
                        let vm = vm.clone();
                        async move {
                            let a = vm
                                .run_access(Request::new("GET", &format!("/?id={id}")))
                                .await;
                            assert!(a.error.is_none(), "{:?}", a.error);
                            assert_eq!(body(&a), format!("{id}\n"));
                        }
                    });
                    futures_join_all(reqs).await;
                });
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}

/// Runs futures concurrently on the current task (a tiny join_all).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut futs: Vec<_> = futs.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        futs.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futs.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

#[test]
fn vm_and_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let n = node("", &[]);
    assert_send(&n.vm);
    let fut = n.vm.run_access(Request::new("GET", "/"));
    assert_send(&fut);
    drop(fut);
}
