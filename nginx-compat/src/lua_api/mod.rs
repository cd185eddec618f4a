//! Builds the `ngx` table of lua-nginx-module inside one Lua state and binds
//! it to "the current request".
//!
//! A VM may interleave many requests (one suspends in `ngx.sleep` while
//! another runs), so per-request state cannot live in the Lua state. Instead
//! the runner makes the request's [`ReqState`] current for the thread around
//! every resume of that request's coroutine (see [`raw`]); every
//! per-request function reads it from there. Functions that make sense
//! without a request (`ngx.now`, `ngx.log`, `ngx.shared`) work in `init` too.

mod cjson;
mod codec;
pub(crate) mod raw;
mod re;
mod shared;
mod var;

use std::os::raw::c_int;
use std::sync::Arc;

use mlua::{Function, Lua, LuaString, MultiValue, Table, Value, Variadic, ffi};

use crate::clock::Clock;
use crate::shdict::SharedDicts;
use raw::{c_closure, call_fallback, current, lua_bytes, raise, string_arg, with_req};

/// Node-wide things every function may need.
pub(crate) struct Env {
    pub(crate) clock: Arc<dyn Clock>,
    /// What `ngx.get_phase()` says outside a request.
    pub(crate) phase: &'static str,
}

/// Sets the phase reported outside requests (`init`, `init_worker`).
pub(crate) fn set_phase(lua: &Lua, phase: &'static str) {
    if let Some(mut env) = lua.app_data_mut::<Env>() {
        env.phase = phase;
    }
}

/// The `ngx_lua_version` reported in `ngx.config`: modules check it to take
/// the modern code paths (e.g. `incr` with `init_ttl` needs 10012).
pub const NGX_LUA_VERSION: i64 = 10025;
/// The nginx version reported in `ngx.config.nginx_version`.
pub const NGINX_VERSION: i64 = 1_021_004;

/// Current time in seconds: the request's cached time when there is a
/// request, else the clock.
fn cached_now(lua: &Lua) -> f64 {
    current(|st| st.now).unwrap_or_else(|| clock_now(lua))
}

pub(crate) fn clock_now(lua: &Lua) -> f64 {
    lua.app_data_ref::<Env>()
        .map(|env| env.clock.now().as_secs_f64())
        .unwrap_or(0.0)
}

const HTTP_STATUS: &[(&str, i64)] = &[
    ("HTTP_CONTINUE", 100),
    ("HTTP_SWITCHING_PROTOCOLS", 101),
    ("HTTP_OK", 200),
    ("HTTP_CREATED", 201),
    ("HTTP_ACCEPTED", 202),
    ("HTTP_NO_CONTENT", 204),
    ("HTTP_PARTIAL_CONTENT", 206),
    ("HTTP_SPECIAL_RESPONSE", 300),
    ("HTTP_MOVED_PERMANENTLY", 301),
    ("HTTP_MOVED_TEMPORARILY", 302),
    ("HTTP_SEE_OTHER", 303),
    ("HTTP_NOT_MODIFIED", 304),
    ("HTTP_TEMPORARY_REDIRECT", 307),
    ("HTTP_PERMANENT_REDIRECT", 308),
    ("HTTP_BAD_REQUEST", 400),
    ("HTTP_UNAUTHORIZED", 401),
    ("HTTP_PAYMENT_REQUIRED", 402),
    ("HTTP_FORBIDDEN", 403),
    ("HTTP_NOT_FOUND", 404),
    ("HTTP_NOT_ALLOWED", 405),
    ("HTTP_NOT_ACCEPTABLE", 406),
    ("HTTP_REQUEST_TIMEOUT", 408),
    ("HTTP_CONFLICT", 409),
    ("HTTP_GONE", 410),
    ("HTTP_UPGRADE_REQUIRED", 426),
    ("HTTP_TOO_MANY_REQUESTS", 429),
    ("HTTP_CLOSE", 444),
    ("HTTP_ILLEGAL", 451),
    ("HTTP_INTERNAL_SERVER_ERROR", 500),
    ("HTTP_METHOD_NOT_IMPLEMENTED", 501),
    ("HTTP_BAD_GATEWAY", 502),
    ("HTTP_SERVICE_UNAVAILABLE", 503),
    ("HTTP_GATEWAY_TIMEOUT", 504),
    ("HTTP_VERSION_NOT_SUPPORTED", 505),
    ("HTTP_INSUFFICIENT_STORAGE", 507),
    // Method constants, as in lua-nginx-module.
    ("HTTP_GET", 2),
    ("HTTP_HEAD", 4),
    ("HTTP_POST", 8),
    ("HTTP_PUT", 16),
    ("HTTP_DELETE", 32),
    ("HTTP_MKCOL", 64),
    ("HTTP_COPY", 128),
    ("HTTP_MOVE", 256),
    ("HTTP_OPTIONS", 512),
    ("HTTP_PROPFIND", 1024),
    ("HTTP_PROPPATCH", 2048),
    ("HTTP_LOCK", 4096),
    ("HTTP_UNLOCK", 8192),
    ("HTTP_PATCH", 16384),
    ("HTTP_TRACE", 32768),
];

const LOG_LEVELS: &[(&str, i64)] = &[
    ("STDERR", 0),
    ("EMERG", 1),
    ("ALERT", 2),
    ("CRIT", 3),
    ("ERR", 4),
    ("WARN", 5),
    ("NOTICE", 6),
    ("INFO", 7),
    ("DEBUG", 8),
];

/// Installs `ngx`, `cjson` and `cjson.safe` into `lua`.
pub(crate) fn install(lua: &Lua, dicts: &SharedDicts, clock: Arc<dyn Clock>) -> mlua::Result<()> {
    lua.set_app_data(Env {
        clock,
        phase: "init",
    });

    let ngx = lua.create_table()?;
    for (name, v) in HTTP_STATUS.iter().chain(LOG_LEVELS) {
        ngx.raw_set(*name, *v)?;
    }
    ngx.raw_set("OK", 0)?;
    ngx.raw_set("ERROR", -1)?;
    ngx.raw_set("AGAIN", -2)?;
    ngx.raw_set("DONE", -4)?;
    ngx.raw_set("DECLINED", -5)?;
    ngx.raw_set("null", Value::NULL)?;

    install_time(lua, &ngx)?;
    install_output(lua, &ngx)?;
    install_misc(lua, &ngx)?;
    codec::install(lua, &ngx)?;
    re::install(lua, &ngx)?;
    var::install(lua, &ngx)?;
    shared::install(lua, &ngx, dicts)?;
    install_ngx_meta(lua, &ngx)?;

    lua.globals().set("ngx", ngx.clone())?;
    let loaded: Table = lua
        .globals()
        .get::<Table>("package")?
        .get::<Table>("loaded")?;
    loaded.set("ngx", ngx)?;
    cjson::install(lua, &loaded)?;
    Ok(())
}

fn install_time(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    ngx.raw_set(
        "now",
        lua.create_function(|lua, ()| Ok((cached_now(lua) * 1000.0).floor() / 1000.0))?,
    )?;
    ngx.raw_set(
        "time",
        lua.create_function(|lua, ()| Ok(cached_now(lua).floor() as i64))?,
    )?;
    ngx.raw_set(
        "update_time",
        lua.create_function(|lua, ()| {
            let now = clock_now(lua);
            current(|st| st.now = now);
            Ok(())
        })?,
    )?;
    ngx.raw_set(
        "today",
        lua.create_function(|lua, ()| {
            let (y, m, d, _, _, _) = civil(cached_now(lua) as i64);
            Ok(format!("{y:04}-{m:02}-{d:02}"))
        })?,
    )?;
    let datetime = |lua: &Lua, ()| {
        let (y, mo, d, h, mi, s) = civil(cached_now(lua) as i64);
        Ok(format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}"))
    };
    ngx.raw_set("localtime", lua.create_function(datetime)?)?;
    ngx.raw_set("utctime", lua.create_function(datetime)?)?;
    ngx.raw_set(
        "sleep",
        lua.create_async_function(|_, secs: f64| async move {
            if !secs.is_finite() || secs < 0.0 {
                return Err(mlua::Error::runtime("invalid sleep duration"));
            }
            if secs == 0.0 {
                // ngx.sleep(0) gives other requests a turn.
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(std::time::Duration::from_secs_f64(secs)).await;
            }
            Ok(())
        })?,
    )?;
    Ok(())
}

/// UTC calendar fields of a Unix time (days-from-civil, inverted).
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// Appends the Lua values as `ngx.print` does: strings, numbers, booleans,
/// `nil`, `ngx.null`, and (nested) array tables of those.
fn write_values(out: &mut Vec<u8>, v: &Value, depth: usize) -> mlua::Result<()> {
    match v {
        Value::String(s) => out.extend_from_slice(&s.as_bytes()),
        Value::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::Number(n) => out.extend_from_slice(codec::fmt_number(*n).as_bytes()),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Nil => out.extend_from_slice(b"nil"),
        Value::LightUserData(p) if p.0.is_null() => out.extend_from_slice(b"null"),
        Value::Table(t) if depth < 32 => {
            for item in t.sequence_values::<Value>() {
                write_values(out, &item?, depth + 1)?;
            }
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad argument to 'print' (string, number, boolean, nil, ngx.null, or array table expected, got {})",
                other.type_name()
            )));
        }
    }
    Ok(())
}

/// Appends a value `ngx.print` takes without walking a table; `false` for
/// one it must leave to the general version.
///
/// # Safety
/// `idx` is a valid index on `l`'s stack.
unsafe fn print_simple(l: *mut ffi::lua_State, idx: c_int, out: Option<&mut Vec<u8>>) -> bool {
    // SAFETY: see above.
    unsafe {
        match ffi::lua_type(l, idx) {
            ffi::LUA_TSTRING => {
                if let Some(out) = out {
                    out.extend_from_slice(lua_bytes(l, idx));
                }
            }
            ffi::LUA_TNUMBER => {
                if let Some(out) = out {
                    let n = ffi::lua_tonumber(l, idx);
                    match raw::as_integer(n) {
                        Some(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
                        None => out.extend_from_slice(codec::fmt_number(n).as_bytes()),
                    }
                }
            }
            ffi::LUA_TBOOLEAN => {
                if let Some(out) = out {
                    let b = ffi::lua_toboolean(l, idx) != 0;
                    out.extend_from_slice(if b { b"true" } else { b"false" });
                }
            }
            ffi::LUA_TNIL => {
                if let Some(out) = out {
                    out.extend_from_slice(b"nil");
                }
            }
            ffi::LUA_TLIGHTUSERDATA if ffi::lua_touserdata(l, idx).is_null() => {
                if let Some(out) = out {
                    out.extend_from_slice(b"null");
                }
            }
            _ => return false,
        }
        true
    }
}

/// `ngx.print` / `ngx.say` for arguments that are not tables; anything
/// else goes to the general version in upvalue 1.
///
/// # Safety
/// Called by Lua as a C closure with that upvalue.
unsafe fn output_c(l: *mut ffi::lua_State, newline: bool) -> c_int {
    // SAFETY: see above.
    unsafe {
        let n = ffi::lua_gettop(l);
        if !(1..=n).all(|i| print_simple(l, i, None)) {
            return call_fallback(l);
        }
        let done = current(|st| {
            st.body_started = true;
            for i in 1..=n {
                print_simple(l, i, Some(&mut st.body));
            }
            if newline {
                st.body.push(b'\n');
            }
        });
        if done.is_none() {
            raise(l, raw::NO_REQUEST);
        }
        ffi::lua_pushinteger(l, 1);
        1
    }
}

unsafe extern "C-unwind" fn print_c(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: installed as a C closure over the general version.
    unsafe { output_c(l, false) }
}

unsafe extern "C-unwind" fn say_c(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: installed as a C closure over the general version.
    unsafe { output_c(l, true) }
}

/// Records `ngx.exit`'s status (the Lua wrapper then yields).
unsafe extern "C-unwind" fn set_exit_c(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe {
        let status = match ffi::lua_type(l, 1) {
            ffi::LUA_TNUMBER => ffi::lua_tonumber(l, 1) as i64,
            ffi::LUA_TSTRING => match std::str::from_utf8(lua_bytes(l, 1))
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
            {
                Some(s) => s,
                None => raise(l, "bad argument #1 to 'exit' (number expected)"),
            },
            _ => raise(l, "bad argument #1 to 'exit' (number expected)"),
        };
        if current(|st| st.exit = Some(status)).is_none() {
            raise(l, raw::NO_REQUEST);
        }
        0
    }
}

fn install_output(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    let output = |newline: bool| {
        move |_lua: &Lua, args: Variadic<Value>| {
            let mut buf = Vec::new();
            for a in args.iter() {
                write_values(&mut buf, a, 0)?;
            }
            if newline {
                buf.push(b'\n');
            }
            with_req(|st| {
                st.body_started = true;
                st.body.extend_from_slice(&buf);
                Ok(1)
            })
        }
    };
    ngx.raw_set(
        "say",
        c_closure(lua, say_c, lua.create_function(output(true))?)?,
    )?;
    ngx.raw_set(
        "print",
        c_closure(lua, print_c, lua.create_function(output(false))?)?,
    )?;
    ngx.raw_set("flush", lua.create_function(|_, _: MultiValue| Ok(1))?)?;
    ngx.raw_set(
        "eof",
        lua.create_function(|_lua, ()| {
            with_req(|st| {
                st.body_started = true;
                Ok(1)
            })
        })?,
    )?;

    // ngx.exit records the status, then yields out of the request's
    // coroutine so that nothing after it runs (a pcall does not catch it,
    // as in OpenResty); the runner sees the yield and ends the phase.
    // SAFETY: set_exit_c is a C function that follows Lua's protocol.
    let set_exit = unsafe { lua.create_c_function(set_exit_c)? };
    let set_redirect = lua.create_function(|_lua, (uri, status): (String, Option<i64>)| {
        let status = status.unwrap_or(302);
        if ![301, 302, 303, 307, 308].contains(&status) {
            return Err(mlua::Error::runtime(format!(
                "only ngx.HTTP_MOVED_TEMPORARILY, ngx.HTTP_MOVED_PERMANENTLY, ngx.HTTP_PERMANENT_REDIRECT, ngx.HTTP_SEE_OTHER, and ngx.HTTP_TEMPORARY_REDIRECT are allowed (got {status})"
            )));
        }
        with_req(|st| {
            st.resp_headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("location"));
            st.resp_headers.push(("Location".into(), uri));
            st.exit = Some(status);
            Ok(())
        })
    })?;
    // User coroutines: OpenResty lets ngx.sleep and ngx.exit work inside
    // coroutines a script creates. coroutine.resume/wrap are wrapped so that
    // an exit, or an async call waiting (mlua's "pending" yield), travels up
    // to the request's own coroutine instead of stopping at the user's.
    let make: Function = lua
        .load(
            r##"
            local set_exit, set_redirect, yield, pending, co = ...
            local co_resume, co_create, co_status = co.resume, co.create, co.status
            local select, error = select, error
            local EXIT = {}
            local function exit(status)
                set_exit(status)
                return yield(EXIT)
            end
            local function redirect(uri, status)
                set_redirect(uri, status)
                return yield(EXIT)
            end
            local handle
            handle = function(thread, ok, first, ...)
                if ok and co_status(thread) == "suspended" then
                    if first == EXIT then
                        return yield(EXIT)
                    elseif first == pending and select("#", ...) == 0 then
                        return handle(thread, co_resume(thread, yield(pending)))
                    end
                end
                return ok, first, ...
            end
            local function resume(thread, ...)
                return handle(thread, co_resume(thread, ...))
            end
            local function unwrap(ok, ...)
                if not ok then
                    error((...), 0)
                end
                return ...
            end
            local function wrap(f)
                local thread = co_create(f)
                return function(...)
                    return unwrap(resume(thread, ...))
                end
            end
            co.resume = resume
            co.wrap = wrap
            return exit, redirect
            "##,
        )
        .set_name("=ngx.exit")
        .into_function()?;
    let co: Table = lua.globals().get("coroutine")?;
    let yield_fn: Function = co.get("yield")?;
    let (exit, redirect): (Function, Function) = make.call((
        set_exit,
        set_redirect,
        yield_fn,
        Value::LightUserData(Lua::poll_pending()),
        co,
    ))?;
    ngx.raw_set("exit", exit)?;
    ngx.raw_set("redirect", redirect)?;
    Ok(())
}

fn log_line(args: &Variadic<Value>) -> String {
    let mut out = Vec::new();
    for a in args.iter() {
        match a {
            Value::Table(_) | Value::Function(_) | Value::UserData(_) | Value::Thread(_) => {
                out.extend_from_slice(format!("{}: {:p}", a.type_name(), a.to_pointer()).as_bytes())
            }
            v => {
                let _ = write_values(&mut out, v, 0);
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn emit_log(level: i64, msg: &str) {
    match level {
        0..=4 => tracing::error!(target: "ngx", "{msg}"),
        5 => tracing::warn!(target: "ngx", "{msg}"),
        6 | 7 => tracing::info!(target: "ngx", "{msg}"),
        _ => tracing::debug!(target: "ngx", "{msg}"),
    }
}

fn install_misc(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    ngx.raw_set(
        "log",
        lua.create_function(|_, (level, rest): (i64, Variadic<Value>)| {
            emit_log(level, &log_line(&rest));
            Ok(())
        })?,
    )?;
    lua.globals().set(
        "print",
        lua.create_function(|_, args: Variadic<Value>| {
            emit_log(6, &log_line(&args));
            Ok(())
        })?,
    )?;
    ngx.raw_set(
        "get_phase",
        lua.create_function(|lua, ()| {
            Ok(current(|st| st.phase.name())
                .unwrap_or_else(|| lua.app_data_ref::<Env>().map_or("init", |env| env.phase)))
        })?,
    )?;

    let config = lua.create_table()?;
    config.raw_set("ngx_lua_version", NGX_LUA_VERSION)?;
    config.raw_set("nginx_version", NGINX_VERSION)?;
    config.raw_set("subsystem", "http")?;
    config.raw_set("debug", false)?;
    config.raw_set("is_console", false)?;
    config.raw_set("prefix", lua.create_function(|_, ()| Ok(""))?)?;
    config.raw_set(
        "nginx_configure",
        lua.create_function(|_, ()| Ok("--with-compat"))?,
    )?;
    ngx.raw_set("config", config)?;

    let worker = lua.create_table()?;
    worker.raw_set("id", lua.create_function(|_, ()| Ok(0))?)?;
    worker.raw_set("count", lua.create_function(|_, ()| Ok(1))?)?;
    worker.raw_set("pid", lua.create_function(|_, ()| Ok(std::process::id()))?)?;
    worker.raw_set("exiting", lua.create_function(|_, ()| Ok(false))?)?;
    ngx.raw_set("worker", worker)?;
    Ok(())
}

/// `ngx.ctx` and `ngx.status` are not plain fields: they are read and written
/// through `ngx`'s metatable, per request.
///
/// `ngx.status` is read and written by C closures (every rejection sets
/// it); `ngx.ctx` and other keys go to the mlua functions they close over.
fn install_ngx_meta(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    let meta = lua.create_table()?;
    let index =
        lua.create_function(|lua, (_, key): (Table, LuaString)| match &*key.as_bytes() {
            b"ctx" => {
                let existing = with_req(|st| Ok(st.ctx.clone()))?;
                match existing {
                    Some(t) => Ok(Value::Table(t)),
                    None => {
                        let t = lua.create_table()?;
                        with_req(|st| {
                            st.ctx = Some(t.clone());
                            Ok(())
                        })?;
                        Ok(Value::Table(t))
                    }
                }
            }
            _ => Ok(Value::Nil),
        })?;
    meta.raw_set("__index", c_closure(lua, ngx_index_c, index)?)?;
    let newindex = lua.create_function(|_lua, (ngx, key, value): (Table, LuaString, Value)| {
        match &*key.as_bytes() {
            b"ctx" => match value {
                Value::Table(t) => with_req(|st| {
                    st.ctx = Some(t);
                    Ok(())
                }),
                _ => Err(mlua::Error::runtime("ctx should be a table")),
            },
            _ => ngx.raw_set(key, value),
        }
    })?;
    meta.raw_set("__newindex", c_closure(lua, ngx_newindex_c, newindex)?)?;
    ngx.set_metatable(Some(meta))?;
    Ok(())
}

/// `ngx.status` as nginx reads a status a script assigns: a number, or a
/// string holding one; `-1` for anything else.
///
/// # Safety
/// `idx` is a valid index on `l`'s stack.
unsafe fn status_value(l: *mut ffi::lua_State, idx: c_int) -> i64 {
    // SAFETY: see above.
    unsafe {
        match ffi::lua_type(l, idx) {
            ffi::LUA_TNUMBER => ffi::lua_tonumber(l, idx) as i64,
            ffi::LUA_TSTRING => std::str::from_utf8(lua_bytes(l, idx))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(-1),
            _ => -1,
        }
    }
}

/// `ngx`'s `__index(t, key)`: `status` here, the rest by upvalue 1.
unsafe extern "C-unwind" fn ngx_index_c(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: installed as a C closure over the general `__index`.
    unsafe {
        if string_arg(l, 2) != Some(b"status") {
            return call_fallback(l);
        }
        match current(|st| st.status.unwrap_or(0)) {
            Some(status) => ffi::lua_pushinteger(l, ffi::lua_Integer::from(status)),
            None => raise(l, raw::NO_REQUEST),
        }
        1
    }
}

/// `ngx`'s `__newindex(t, key, value)`: `status` here, the rest by
/// upvalue 1.
unsafe extern "C-unwind" fn ngx_newindex_c(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: installed as a C closure over the general `__newindex`.
    unsafe {
        if string_arg(l, 2) != Some(b"status") {
            return call_fallback(l);
        }
        let Some(status) = u16::try_from(status_value(l, 3))
            .ok()
            .filter(|s| (100..=999).contains(s))
        else {
            raise(l, "invalid HTTP status code");
        };
        if current(|st| st.status = Some(status)).is_none() {
            raise(l, raw::NO_REQUEST);
        }
        0
    }
}
