//! `ngx.shared.DICT` semantics, from Lua and from Rust, with a manual clock
//! for TTLs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{T0, node, say};
use nginx_compat::{DictError, DictValue, ManualClock, SetMode, SharedDict, SharedDicts};

#[tokio::test]
async fn incr_without_init_on_missing_key_is_not_found() {
    let n = node(
        r#"
        local d = ngx.shared.d
        local v, err = d:incr("missing", 1)
        ngx.say(tostring(v), " ", err)
        d:set("s", "text")
        v, err = d:incr("s", 1)
        ngx.say(tostring(v), " ", err)
        v, err = d:incr("missing", 5, 10)
        ngx.say(v, " ", tostring(err))
        "#,
        &[("d", 1 << 20)],
    );
    assert_eq!(
        say(&n.vm).await,
        "nil not found\nnil not a number\n15 nil\n"
    );
}

#[tokio::test]
async fn incr_with_init_ttl_expires_and_later_incr_keeps_the_ttl() {
    let n = node(
        r#"
        local d = ngx.shared.d
        local step = ngx.var.arg_step
        if step == "1" then
            local v, err, forcible = d:incr("k", 1, 0, 10)
            ngx.say(v, " ", tostring(err), " ", tostring(forcible), " ttl=", d:ttl("k"))
        elseif step == "2" then
            local v = d:incr("k", 1, 0, 100)
            ngx.say(v, " ttl=", d:ttl("k"))
        else
            local v, err = d:get("k")
            ngx.say(tostring(v), " ", tostring(err), " ", tostring(d:ttl("k")))
        end
        "#,
        &[("d", 1 << 20)],
    );
    let run = |step: &str| {
        let req = nginx_compat::Request::new("GET", &format!("/?step={step}"));
        let vm = &n.vm;
        async move { common::body(&common::access(vm, req).await) }
    };
    assert_eq!(run("1").await, "1 nil false ttl=10\n");
    n.clock.advance(Duration::from_millis(6_500));
    // The init_ttl of a later incr is ignored: the original TTL runs on.
    assert_eq!(run("2").await, "2 ttl=3.5\n");
    n.clock.advance(Duration::from_millis(3_499));
    assert_eq!(run("3").await, "2 nil 0.001\n");
    n.clock.advance(Duration::from_millis(1));
    assert_eq!(run("3").await, "nil nil nil\n");
}

#[tokio::test]
async fn add_replace_set_and_their_errors() {
    let n = node(
        r#"
        local d = ngx.shared.d
        ngx.say(tostring(d:add("k", 1)))
        local ok, err, forcible = d:add("k", 2)
        ngx.say(tostring(ok), " ", err, " ", tostring(forcible))
        ok, err = d:safe_add("k", 2)
        ngx.say(tostring(ok), " ", err)
        ok, err = d:replace("nope", 1)
        ngx.say(tostring(ok), " ", err)
        ngx.say(tostring(d:replace("k", "two")), " ", d:get("k"))
        d:set("flagged", "v", 0, 7)
        ngx.say(d:get("flagged"), " ", select(2, d:get("flagged")))
        d:set("b", true)
        d:set("f", 1.5)
        ngx.say(type(d:get("b")), " ", type(d:get("f")), " ", d:get("f"))
        d:delete("k")
        ngx.say(tostring(d:get("k")))
        local v, e = d:get(nil)
        ngx.say(tostring(v), " ", e)
        v, e = d:get("")
        ngx.say(tostring(v), " ", e)
        d:set(42, "num key")
        ngx.say(d:get("42"))
        "#,
        &[("d", 1 << 20)],
    );
    assert_eq!(
        say(&n.vm).await,
        "true\nfalse exists false\nfalse exists\nfalse not found\ntrue two\nv 7\nboolean number 1.5\nnil\nnil nil key\nnil empty key\nnum key\n"
    );
}

#[tokio::test]
async fn binary_keys_and_values_round_trip() {
    let n = node(
        r#"
        local d = ngx.shared.d
        local key = "\0\1\255k"
        local val = "a\0b\255"
        d:set(key, val)
        local got = d:get(key)
        ngx.say(#got, " ", tostring(got == val), " ", tostring(d:get("\0\1\255") == nil))
        local keys = d:get_keys()
        ngx.say(#keys, " ", tostring(keys[1] == key))
        "#,
        &[("d", 1 << 20)],
    );
    assert_eq!(say(&n.vm).await, "4 true true\n1 true\n");
}

#[tokio::test]
async fn full_dict_evicts_lru_with_forcible_and_safe_set_says_no_memory() {
    let n = node(
        r#"
        local d = ngx.shared.d
        local value = string.rep("x", 100)
        local first_forcible
        for i = 1, 20 do
            local ok, err, forcible = d:set("k" .. i, value)
            assert(ok, err)
            if forcible and not first_forcible then
                first_forcible = i
            end
        end
        ngx.say("first forcible at ", first_forcible)
        -- the oldest keys were evicted, the newest are there
        ngx.say(tostring(d:get("k1")), " ", tostring(d:get("k20") ~= nil))
        local ok, err, forcible = d:safe_set("new", value)
        ngx.say(tostring(ok), " ", err, " ", tostring(forcible))
        ok, err = d:safe_add("new2", value)
        ngx.say(tostring(ok), " ", err)
        ok, err = d:set("huge", string.rep("y", 5000))
        ngx.say(tostring(ok), " ", err)
        ngx.say(d:capacity(), " ", tostring(d:free_space() < 200))
        "#,
        &[("d", 1000)],
    );
    // Each entry costs 64 + 2 + 100 bytes: 6 fit in 1000, the 7th evicts.
    assert_eq!(
        say(&n.vm).await,
        "first forcible at 7\nnil true\nfalse no memory false\nfalse no memory\nfalse no memory\n1000 true\n"
    );
}

#[tokio::test]
async fn get_touches_lru_order() {
    let n = node(
        r#"
        local d = ngx.shared.d
        local value = string.rep("x", 100)
        for i = 1, 6 do d:set("k" .. i, value) end
        d:get("k1")                 -- k1 is now the most recently used
        local ok, err, forcible = d:set("k7", value)
        ngx.say(tostring(forcible), " ", tostring(d:get("k1") ~= nil), " ", tostring(d:get("k2")))
        "#,
        &[("d", 1000)],
    );
    assert_eq!(say(&n.vm).await, "true true nil\n");
}

#[tokio::test]
async fn ttl_expire_stale_flush() {
    let n = node(
        r#"
        local d = ngx.shared.d
        local step = ngx.var.arg_step
        if step == "1" then
            d:set("a", "va", 1.5)
            d:set("b", "vb")
            d:set("c", "vc", 5)
            ngx.say(d:ttl("a"), " ", d:ttl("b"), " ", tostring(d:expire("c", 0)), " ", d:ttl("c"))
            local ok, err = d:expire("zzz", 1)
            ngx.say(tostring(ok), " ", err)
        elseif step == "2" then
            local v, flags, stale = d:get_stale("a")
            ngx.say(tostring(d:get("a")), " ", v, " ", tostring(flags), " ", tostring(stale))
            ngx.say(#d:get_keys(0), " ", d:flush_expired())
            d:flush_all()
            ngx.say(tostring(d:get("b")), " ", select(3, d:get_stale("b")), " ", #d:get_keys())
            ngx.say(d:flush_expired(1), " ", d:flush_expired())
        end
        "#,
        &[("d", 1 << 20)],
    );
    let run = |step: &str| {
        let req = nginx_compat::Request::new("GET", &format!("/?step={step}"));
        let vm = &n.vm;
        async move { common::body(&common::access(vm, req).await) }
    };
    assert_eq!(run("1").await, "1.5 0 true 0\nnil not found\n");
    n.clock.advance(Duration::from_secs(2));
    assert_eq!(run("2").await, "nil va nil true\n2 1\nnil true 0\n1 1\n");
}

#[tokio::test]
async fn lists() {
    let n = node(
        r#"
        local d = ngx.shared.d
        ngx.say(d:lpush("l", "b"), d:lpush("l", "a"), d:rpush("l", 3))
        ngx.say(d:llen("l"), " ", d:lpop("l"), " ", d:rpop("l"), " ", d:rpop("l"), " ", tostring(d:rpop("l")))
        ngx.say(d:llen("l"), " ", tostring(d:get("l")))
        d:set("s", 1)
        local v, err = d:lpush("s", 1)
        ngx.say(tostring(v), " ", err)
        d:rpush("l2", "x")
        v, err = d:get("l2")
        ngx.say(tostring(v), " ", err)
        v, err = d:lpush("l2", {})
        ngx.say(tostring(v), " ", err)
        "#,
        &[("d", 1 << 20)],
    );
    assert_eq!(
        say(&n.vm).await,
        "123\n3 a 3 b nil\n0 nil\nnil value not a list\nnil value is a list\nnil bad value type\n"
    );
}

#[test]
fn sixty_four_threads_of_incr_end_at_the_exact_total() {
    let clock = ManualClock::new(T0);
    let dict = Arc::new(SharedDict::new("d", 1 << 20, clock));
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let dict = dict.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    dict.incr(b"hits", 1.0, Some(0.0), 0.0).expect("incr");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let got = dict.get(b"hits", false).expect("get").expect("present");
    assert_eq!(got.value, DictValue::Number(640_000.0));
}

#[test]
fn sixty_four_lua_vms_on_threads_incr_one_key() {
    let n = node(
        r#"
        local d = ngx.shared.d
        for i = 1, 2000 do
            local v, err = d:incr("hits", 1, 0)
            if not v then error(err) end
        end
        "#,
        &[("d", 1 << 20)],
    );
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let engine = n.engine.clone();
            std::thread::spawn(move || {
                let vm = engine.new_vm().expect("vm");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let a = rt.block_on(vm.run_access(nginx_compat::Request::new("GET", "/")));
                assert!(a.error.is_none(), "{:?}", a.error);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let got = n
        .engine
        .dicts()
        .get("d")
        .expect("dict")
        .get(b"hits", false)
        .expect("get")
        .expect("present");
    assert_eq!(got.value, DictValue::Number(128_000.0));
}

#[test]
fn rust_api_store_modes_and_errors() {
    let clock = ManualClock::new(T0);
    let dicts = SharedDicts::new([("a", 4096usize), ("b", 100)], clock.clone()).expect("dicts");
    assert!(SharedDicts::new([("x", 1usize), ("x", 2)], clock.clone()).is_err());
    let a = dicts.get("a").expect("a");
    assert_eq!(a.capacity(), 4096);
    assert_eq!(a.free_space(), 4096);
    assert_eq!(
        a.store(b"k", Some(DictValue::Bool(true)), 0.0, 0, SetMode::Add),
        Ok(false)
    );
    assert_eq!(
        a.store(b"k", Some(DictValue::Bool(true)), 0.0, 0, SetMode::Add),
        Err((DictError::Exists, false))
    );
    assert_eq!(a.incr(b"k", 1.0, None, 0.0), Err(DictError::NotANumber));
    assert_eq!(a.ttl(b"nope"), Err(DictError::NotFound));
    assert!(a.free_space() < 4096);
    a.delete(b"k").expect("delete");
    assert_eq!(a.free_space(), 4096);
    // Larger than the whole dict: no memory, nothing evicted.
    let b = dicts.get("b").expect("b");
    assert_eq!(
        b.store(
            b"k",
            Some(DictValue::Bytes(vec![0; 200])),
            0.0,
            0,
            SetMode::Set
        ),
        Err((DictError::NoMemory, false))
    );
    // Expired items are reclaimed without counting as forcible.
    b.store(
        b"t",
        Some(DictValue::Bytes(vec![0; 20])),
        1.0,
        0,
        SetMode::Set,
    )
    .expect("set");
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        b.store(
            b"u",
            Some(DictValue::Bytes(vec![0; 20])),
            0.0,
            0,
            SetMode::SafeSet
        ),
        Ok(false)
    );
}
