//! `ngx.var`, `ngx.req.*` and `ngx.header`: the request as nginx variables,
//! request-header edits that the host applies upstream, and the response
//! headers a script sets.

use std::borrow::Cow;
use std::net::IpAddr;
use std::os::raw::c_int;

use mlua::{Lua, LuaString, Table, Value, ffi};

use super::codec;
use super::raw::{
    NO_REQUEST, c_closure, call_fallback, current, lua_bytes, push_bytes, raise, with_req,
};
use crate::request::{ReqState, header_name_eq};

fn var_value<'a>(st: &'a ReqState, name: &[u8]) -> Option<Cow<'a, [u8]>> {
    let req = &st.req;
    let s = |v: &'a str| Some(Cow::Borrowed(v.as_bytes()));
    match name {
        b"uri" => s(&req.uri),
        b"request_uri" => Some(Cow::Owned(req.request_uri().into_bytes())),
        b"args" | b"query_string" => s(&req.args),
        b"is_args" => s(if req.args.is_empty() { "" } else { "?" }),
        b"request_method" => s(&req.method),
        b"remote_addr" => Some(Cow::Owned(req.remote_addr.to_string().into_bytes())),
        b"binary_remote_addr" => Some(Cow::Owned(match req.remote_addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        })),
        b"host" if req.host.is_empty() => req
            .header_value("host")
            .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
            .and_then(s),
        b"host" => s(&req.host),
        b"scheme" => s(&req.scheme),
        b"https" => s(if req.scheme == "https" { "on" } else { "" }),
        b"server_port" => Some(Cow::Owned(req.server_port.to_string().into_bytes())),
        b"server_protocol" => s("HTTP/1.1"),
        b"request_time" => {
            let t = st.request_time.unwrap_or(st.now - st.start).max(0.0);
            Some(Cow::Owned(format!("{t:.3}").into_bytes()))
        }
        b"msec" => Some(Cow::Owned(format!("{:.3}", st.now).into_bytes())),
        b"status" => st.status.map(|c| Cow::Owned(c.to_string().into_bytes())),
        _ => {
            let name = std::str::from_utf8(name).ok()?;
            if let Some(v) = req.vars.get(name) {
                return s(v);
            }
            if let Some(h) = name.strip_prefix("http_") {
                return req.header_value(h).and_then(s);
            }
            if let Some(a) = name.strip_prefix("arg_") {
                return arg_value(&req.args, a);
            }
            if let Some(c) = name.strip_prefix("cookie_") {
                return cookie_value(req.header_value("cookie")?, c).and_then(s);
            }
            None
        }
    }
}

/// `$arg_NAME`: the raw (still escaped) value of the first matching argument,
/// name compared case-insensitively as nginx does.
fn arg_value<'a>(args: &'a str, name: &str) -> Option<Cow<'a, [u8]>> {
    args.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        k.eq_ignore_ascii_case(name)
            .then_some(Cow::Borrowed(v.as_bytes()))
    })
}

fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// Decodes `a=1&b&c=x+y` into a Lua table as `ngx.req.get_uri_args` does:
/// flag arguments are `true`, repeated names become arrays.
fn args_table(lua: &Lua, args: &str, max: usize) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (n, pair) in args.split('&').filter(|p| !p.is_empty()).enumerate() {
        if max > 0 && n >= max {
            break;
        }
        let (k, v) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        let key = lua.create_string(codec::unescape(k.as_bytes(), true))?;
        let val = match v {
            Some(v) => Value::String(lua.create_string(codec::unescape(v.as_bytes(), true))?),
            None => Value::Boolean(true),
        };
        append_value(lua, &t, key, val)?;
    }
    Ok(t)
}

/// Sets `t[key] = val`, or turns an existing value into an array of values.
fn append_value(lua: &Lua, t: &Table, key: LuaString, val: Value) -> mlua::Result<()> {
    match t.raw_get::<Value>(&key)? {
        Value::Nil => t.raw_set(key, val),
        Value::Table(arr) => arr.raw_push(val),
        old => {
            let arr = lua.create_sequence_from([old, val])?;
            t.raw_set(key, arr)
        }
    }
}

fn header_values(v: Value) -> mlua::Result<Option<Vec<String>>> {
    Ok(match v {
        Value::Nil => None,
        Value::Table(t) => Some(
            t.sequence_values::<LuaString>()
                .map(|s| s.map(|s| s.to_string_lossy()))
                .collect::<mlua::Result<_>>()?,
        ),
        Value::String(s) => Some(vec![s.to_string_lossy()]),
        Value::Integer(i) => Some(vec![i.to_string()]),
        Value::Number(n) => Some(vec![codec::fmt_number(n)]),
        Value::Boolean(b) => Some(vec![b.to_string()]),
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad header value type {}",
                other.type_name()
            )));
        }
    })
}

fn normalize_header(name: &str) -> String {
    name.replace('_', "-")
}

pub(super) fn install(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    // ngx.var
    let var = lua.create_table()?;
    let var_meta = lua.create_table()?;
    // SAFETY (both): C functions that follow Lua's protocol.
    var_meta.raw_set("__index", unsafe { lua.create_c_function(var_index_c)? })?;
    var_meta.raw_set("__newindex", unsafe {
        lua.create_c_function(var_newindex_c)?
    })?;
    var.set_metatable(Some(var_meta))?;
    ngx.raw_set("var", var)?;

    // ngx.req
    let req = lua.create_table()?;
    req.raw_set(
        "get_method",
        lua.create_function(|_lua, ()| with_req(|st| Ok(st.req.method.clone())))?,
    )?;
    req.raw_set("http_version", lua.create_function(|_, ()| Ok(1.1))?)?;
    req.raw_set(
        "start_time",
        lua.create_function(|_lua, ()| with_req(|st| Ok(st.start)))?,
    )?;
    // The host reads the body (up to its limit) before the access phase, so
    // read_body never waits; as in OpenResty, get_body_data and
    // get_post_args see the body only after read_body.
    req.raw_set("read_body", unsafe { lua.create_c_function(read_body_c)? })?;
    req.raw_set(
        "discard_body",
        lua.create_function(|_, ()| {
            with_req(|st| {
                st.body_read = false;
                st.req.body = None;
                Ok(())
            })
        })?,
    )?;
    req.raw_set("get_body_data", unsafe {
        lua.create_c_function(get_body_data_c)?
    })?;
    req.raw_set(
        "get_body_file",
        lua.create_function(|_, ()| Ok(Value::Nil))?,
    )?;
    req.raw_set(
        "get_uri_args",
        lua.create_function(|lua, max: Option<usize>| {
            let args = with_req(|st| Ok(st.req.args.clone()))?;
            args_table(lua, &args, max.unwrap_or(100))
        })?,
    )?;
    req.raw_set(
        "get_post_args",
        lua.create_function(|lua, max: Option<usize>| {
            let body = with_req(|st| Ok(st.req.body.clone().filter(|_| st.body_read)))?;
            let Some(body) = body else {
                return Ok((Value::Nil, Some("no request body found")));
            };
            let body = String::from_utf8_lossy(&body);
            let t = args_table(lua, &body, max.unwrap_or(100))?;
            Ok((Value::Table(t), None))
        })?,
    )?;
    // Header tables answer any spelling: `h.user_agent`, `h["User-Agent"]`.
    let headers_meta = lua.create_table()?;
    headers_meta.raw_set(
        "__index",
        lua.create_function(|_, (t, key): (Table, String)| {
            let norm = normalize_header(&key).to_ascii_lowercase();
            if norm == key {
                return Ok(Value::Nil);
            }
            t.raw_get::<Value>(norm)
        })?,
    )?;
    let headers_meta_key = lua.create_registry_value(headers_meta)?;
    req.raw_set(
        "get_headers",
        lua.create_function(move |lua, (max, raw): (Option<usize>, Option<bool>)| {
            let headers = with_req(|st| Ok(st.req.headers.clone()))?;
            let max = max.unwrap_or(100);
            let t = lua.create_table()?;
            for (n, (name, value)) in headers.iter().enumerate() {
                if max > 0 && n >= max {
                    break;
                }
                let key = if raw == Some(true) {
                    lua.create_string(name)?
                } else {
                    lua.create_string(name.to_ascii_lowercase())?
                };
                append_value(lua, &t, key, Value::String(lua.create_string(value)?))?;
            }
            if raw != Some(true) {
                t.set_metatable(Some(lua.registry_value::<Table>(&headers_meta_key)?))?;
            }
            Ok(t)
        })?,
    )?;
    req.raw_set(
        "set_header",
        lua.create_function(|_lua, (name, value): (String, Value)| {
            let values = header_values(value)?;
            with_req(|st| {
                set_req_header(st, &name, values);
                Ok(())
            })
        })?,
    )?;
    req.raw_set(
        "clear_header",
        lua.create_function(|_lua, name: String| {
            with_req(|st| {
                set_req_header(st, &name, None);
                Ok(())
            })
        })?,
    )?;
    ngx.raw_set("req", req)?;

    // ngx.header: response headers.
    let header = lua.create_table()?;
    let header_meta = lua.create_table()?;
    header_meta.raw_set(
        "__index",
        lua.create_function(|lua, (_, name): (Table, String)| {
            let name = normalize_header(&name);
            let values: Vec<String> = with_req(|st| {
                Ok(st
                    .resp_headers
                    .iter()
                    .filter(|(n, _)| header_name_eq(n, &name))
                    .map(|(_, v)| v.clone())
                    .collect())
            })?;
            match values.len() {
                0 => Ok(Value::Nil),
                1 => Ok(Value::String(lua.create_string(&values[0])?)),
                _ => Ok(Value::Table(lua.create_sequence_from(values)?)),
            }
        })?,
    )?;
    let newindex = lua.create_function(|_, (_, name, value): (Table, String, Value)| {
        let name = normalize_header(&name);
        let values = header_values(value)?;
        with_req(|st| {
            st.resp_headers.retain(|(n, _)| !header_name_eq(n, &name));
            for v in values.into_iter().flatten() {
                st.resp_headers.push((name.clone(), v));
            }
            Ok(())
        })
    })?;
    header_meta.raw_set("__newindex", c_closure(lua, header_newindex_c, newindex)?)?;
    header.set_metatable(Some(header_meta))?;
    ngx.raw_set("header", header)?;
    Ok(())
}

/// Applies `ngx.req.set_header` (`Some`) or `clear_header` (`None`) to the
/// request seen by later `ngx.var.http_*` reads, and records the edit for the
/// host.
fn set_req_header(st: &mut ReqState, name: &str, values: Option<Vec<String>>) {
    st.req.headers.retain(|(n, _)| !header_name_eq(n, name));
    st.set_headers.retain(|(n, _)| !header_name_eq(n, name));
    st.cleared_headers.retain(|n| !header_name_eq(n, name));
    match values {
        Some(values) if !values.is_empty() => {
            for v in values {
                st.req.headers.push((name.to_owned(), v.clone()));
                st.set_headers.push((name.to_owned(), v));
            }
        }
        _ => st.cleared_headers.push(name.to_owned()),
    }
}

/// `ngx.var`'s `__index(t, name)`.
unsafe extern "C-unwind" fn var_index_c(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function; the value is pushed while the
    // request is borrowed, saving a copy.
    unsafe {
        let name: &[u8] = match ffi::lua_type(l, 2) {
            ffi::LUA_TSTRING | ffi::LUA_TNUMBER => lua_bytes(l, 2),
            _ => &[],
        };
        let found = current(|st| match var_value(st, name) {
            Some(v) => push_bytes(l, &v),
            None => ffi::lua_pushnil(l),
        });
        if found.is_none() {
            raise(l, NO_REQUEST);
        }
        1
    }
}

/// `ngx.var`'s `__newindex(t, name, value)`: a string or number sets the
/// variable, `nil` unsets it.
unsafe extern "C-unwind" fn var_newindex_c(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function; nothing owned is alive when it
    // raises.
    unsafe {
        if !matches!(ffi::lua_type(l, 2), ffi::LUA_TSTRING | ffi::LUA_TNUMBER) {
            raise(l, "bad variable name");
        }
        let value = match ffi::lua_type(l, 3) {
            ffi::LUA_TNIL => None,
            ffi::LUA_TSTRING | ffi::LUA_TNUMBER => Some(lua_bytes(l, 3)),
            _ => raise(l, "bad variable value"),
        };
        let name = lua_bytes(l, 2);
        let set = current(|st| {
            let name = String::from_utf8_lossy(name);
            match value {
                Some(v) => {
                    let v = String::from_utf8_lossy(v).into_owned();
                    match st.req.vars.get_mut(&*name) {
                        Some(old) => *old = v,
                        None => {
                            st.req.vars.insert(name.into_owned(), v);
                        }
                    }
                }
                None => {
                    st.req.vars.remove(&*name);
                }
            }
        });
        if set.is_none() {
            raise(l, NO_REQUEST);
        }
        0
    }
}

/// `ngx.req.read_body()`: the host read the body (up to its limit) before
/// the access phase, so this never waits; as in OpenResty,
/// `get_body_data` and `get_post_args` see the body only after it.
unsafe extern "C-unwind" fn read_body_c(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe {
        if current(|st| st.body_read = st.req.body.is_some()).is_none() {
            raise(l, NO_REQUEST);
        }
        0
    }
}

/// `ngx.req.get_body_data(max_bytes?)`.
unsafe extern "C-unwind" fn get_body_data_c(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe {
        let max = match ffi::lua_type(l, 1) {
            ffi::LUA_TNUMBER => {
                let n = ffi::lua_tonumber(l, 1);
                (n >= 1.0).then_some(n as usize)
            }
            _ => None,
        };
        let found = current(|st| match &st.req.body {
            Some(b) if st.body_read && !b.is_empty() => {
                push_bytes(l, &b[..max.map_or(b.len(), |m| m.min(b.len()))])
            }
            _ => ffi::lua_pushnil(l),
        });
        if found.is_none() {
            raise(l, NO_REQUEST);
        }
        1
    }
}

/// `ngx.header`'s `__newindex(t, name, value)` for a string value; tables,
/// numbers, `nil` and the rest go to the general version in upvalue 1.
unsafe extern "C-unwind" fn header_newindex_c(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: installed as a C closure over the general `__newindex`.
    unsafe {
        if ffi::lua_type(l, 2) != ffi::LUA_TSTRING || ffi::lua_type(l, 3) != ffi::LUA_TSTRING {
            return call_fallback(l);
        }
        let (name, value) = (lua_bytes(l, 2), lua_bytes(l, 3));
        let set = current(|st| {
            let name = normalize_header(&String::from_utf8_lossy(name));
            st.resp_headers.retain(|(n, _)| !header_name_eq(n, &name));
            st.resp_headers
                .push((name, String::from_utf8_lossy(value).into_owned()));
        });
        if set.is_none() {
            raise(l, NO_REQUEST);
        }
        0
    }
}
