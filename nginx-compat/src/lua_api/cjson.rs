//! The `cjson` and `cjson.safe` modules: JSON encoding of Lua values in the
//! way lua-cjson writes them (integers without a decimal point, escaped `/`,
//! empty tables as `{}`, sparse-array rules), decoding through `serde_json`.
//! `encode` is a C function over the raw Lua API, as lua-cjson's is: a
//! request's JSON answer costs no registry reference per value.

use std::os::raw::{c_char, c_int};

use mlua::{LightUserData, Lua, LuaSerdeExt, LuaString, Table, Value, ffi};

use super::codec::fmt_number;
use super::raw::{as_integer, lua_bytes};

/// Address used as the `cjson.empty_array` sentinel.
static EMPTY_ARRAY: u8 = 0;
const MAX_DEPTH: usize = 1000;

fn empty_array() -> Value {
    Value::LightUserData(LightUserData(std::ptr::addr_of!(EMPTY_ARRAY) as *mut _))
}

fn escape_into(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &c in s {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'/' => out.extend_from_slice(b"\\/"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            c if c < 0x20 || c == 0x7f => {
                out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
            }
            c => out.push(c),
        }
    }
    out.push(b'"');
}

/// Why a value cannot be encoded; the message is lua-cjson's.
#[derive(Debug)]
enum EncodeError {
    Depth(usize),
    BadNumber,
    BadKey,
    Type(&'static str),
    Stack,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::Depth(d) => write!(f, "Cannot serialise, excessive nesting ({d})"),
            EncodeError::BadNumber => {
                f.write_str("Cannot serialise number: must not be NaN or Infinity")
            }
            EncodeError::BadKey => {
                f.write_str("Cannot serialise table: table key must be a number or string")
            }
            EncodeError::Type(t) => write!(f, "Cannot serialise {t}: type not supported"),
            EncodeError::Stack => f.write_str("Cannot serialise, Lua stack exhausted"),
        }
    }
}

/// The registry field holding mlua's array metatable, so the raw encoder
/// can recognise arrays marked with `cjson.array_mt`.
const ARRAY_MT_KEY: &std::ffi::CStr = c"nginx_compat.cjson.array_mt";

fn number_into(out: &mut Vec<u8>, n: f64) -> Result<(), EncodeError> {
    if let Some(i) = as_integer(n) {
        out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
    } else if n.is_finite() {
        out.extend_from_slice(fmt_number(n).as_bytes());
    } else {
        return Err(EncodeError::BadNumber);
    }
    Ok(())
}

/// Writes the value at absolute stack index `idx` as JSON. Walks tables
/// with the raw C API (no references into the registry per value), in
/// `next` order, leaving the stack as it found it.
///
/// # Safety
/// `l` is a live Lua state and `idx` a valid absolute index on it. Calls
/// nothing that can raise a Lua error except on allocation failure.
unsafe fn encode_raw(
    l: *mut ffi::lua_State,
    idx: c_int,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), EncodeError> {
    if depth > MAX_DEPTH {
        return Err(EncodeError::Depth(depth));
    }
    // SAFETY: every call below works on the live state `l`, at `idx` or at
    // slots this function pushed (space checked first) and pops again.
    unsafe {
        match ffi::lua_type(l, idx) {
            ffi::LUA_TNIL => out.extend_from_slice(b"null"),
            ffi::LUA_TBOOLEAN => out.extend_from_slice(if ffi::lua_toboolean(l, idx) != 0 {
                b"true"
            } else {
                b"false"
            }),
            ffi::LUA_TNUMBER => number_into(out, ffi::lua_tonumber(l, idx))?,
            ffi::LUA_TSTRING => escape_into(out, lua_bytes(l, idx)),
            ffi::LUA_TLIGHTUSERDATA => {
                let p = ffi::lua_touserdata(l, idx);
                if p.is_null() {
                    out.extend_from_slice(b"null");
                } else if std::ptr::eq(p as *const u8, std::ptr::addr_of!(EMPTY_ARRAY)) {
                    out.extend_from_slice(b"[]");
                } else {
                    return Err(EncodeError::Type("userdata"));
                }
            }
            ffi::LUA_TTABLE => {
                if ffi::lua_checkstack(l, 4) == 0 {
                    return Err(EncodeError::Stack);
                }
                let mut is_array_mt = false;
                if ffi::lua_getmetatable(l, idx) != 0 {
                    ffi::lua_getfield(l, ffi::LUA_REGISTRYINDEX, ARRAY_MT_KEY.as_ptr());
                    is_array_mt = ffi::lua_rawequal(l, -1, -2) != 0;
                    ffi::lua_settop(l, -3);
                }
                let len = if is_array_mt {
                    Some(ffi::lua_objlen(l, idx))
                } else {
                    // First pass: lua-cjson's array rule over the keys.
                    let (mut max, mut count, mut array) = (0usize, 0usize, true);
                    ffi::lua_pushnil(l);
                    while ffi::lua_next(l, idx) != 0 {
                        ffi::lua_settop(l, -2);
                        let k = (ffi::lua_type(l, -1) == ffi::LUA_TNUMBER)
                            .then(|| as_integer(ffi::lua_tonumber(l, -1)))
                            .flatten()
                            .filter(|i| *i >= 1);
                        match k {
                            Some(i) if array => {
                                max = max.max(usize::try_from(i).unwrap_or(usize::MAX));
                                count += 1;
                            }
                            _ => array = false,
                        }
                    }
                    // Excessively sparse arrays are refused by cjson; they
                    // are encoded as objects instead (ratio 2, safe below 10).
                    (array && max > 0 && !(max > 10 && max > count * 2)).then_some(max)
                };
                match len {
                    Some(len) => {
                        out.push(b'[');
                        for i in 1..=len {
                            if i > 1 {
                                out.push(b',');
                            }
                            ffi::lua_rawgeti(l, idx, i as ffi::lua_Integer);
                            let r = encode_raw(l, ffi::lua_gettop(l), out, depth + 1);
                            ffi::lua_settop(l, -2);
                            r?;
                        }
                        out.push(b']');
                    }
                    None => {
                        out.push(b'{');
                        let mut first = true;
                        ffi::lua_pushnil(l);
                        while ffi::lua_next(l, idx) != 0 {
                            let top = ffi::lua_gettop(l);
                            let r = (|| {
                                if !first {
                                    out.push(b',');
                                }
                                first = false;
                                match ffi::lua_type(l, top - 1) {
                                    ffi::LUA_TSTRING => escape_into(out, lua_bytes(l, top - 1)),
                                    ffi::LUA_TNUMBER => {
                                        // Never lua_tolstring a key: it
                                        // would turn it into a string and
                                        // break `next`.
                                        let mut key = Vec::new();
                                        number_into(&mut key, ffi::lua_tonumber(l, top - 1))?;
                                        escape_into(out, &key);
                                    }
                                    _ => return Err(EncodeError::BadKey),
                                }
                                out.push(b':');
                                encode_raw(l, top, out, depth + 1)
                            })();
                            if r.is_err() {
                                ffi::lua_settop(l, -3);
                                return r;
                            }
                            ffi::lua_settop(l, -2);
                        }
                        out.push(b'}');
                    }
                }
            }
            ffi::LUA_TFUNCTION => return Err(EncodeError::Type("function")),
            ffi::LUA_TTHREAD => return Err(EncodeError::Type("thread")),
            _ => return Err(EncodeError::Type("userdata")),
        }
    }
    Ok(())
}

thread_local! {
    /// The encoder's output buffer, kept between calls.
    static ENCODE_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Encodes argument 1; on success pushes the JSON string and returns
/// `Ok(())`, else returns the message (nothing pushed).
///
/// # Safety
/// Called from a C function of `l` with at least one stack slot free.
unsafe fn encode_arg(l: *mut ffi::lua_State) -> Result<(), String> {
    // SAFETY: see the callers; the buffer is taken out of the thread-local
    // while Lua runs, so even an allocation error raised by
    // lua_pushlstring (which unwinds past this frame) leaves no borrow.
    unsafe {
        if ffi::lua_gettop(l) < 1 {
            ffi::lua_pushnil(l);
        }
        let mut out = ENCODE_BUF.take();
        out.clear();
        let r = encode_raw(l, 1, &mut out, 0);
        let r = match r {
            Ok(()) => {
                ffi::lua_pushlstring(l, out.as_ptr() as *const c_char, out.len());
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        if out.capacity() <= 64 * 1024 {
            ENCODE_BUF.set(out);
        }
        r
    }
}

/// `cjson.encode(value)`: raises lua-cjson's error on a value it cannot
/// encode.
unsafe extern "C-unwind" fn encode_c(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe {
        match encode_arg(l) {
            Ok(()) => 1,
            Err(msg) => {
                ffi::lua_pushlstring(l, msg.as_ptr() as *const c_char, msg.len());
                drop(msg);
                ffi::lua_error(l)
            }
        }
    }
}

/// `cjson.safe.encode(value)`: `nil, message` instead of an error.
unsafe extern "C-unwind" fn encode_safe_c(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function.
    unsafe {
        match encode_arg(l) {
            Ok(()) => {
                ffi::lua_pushnil(l);
                2
            }
            Err(msg) => {
                ffi::lua_pushnil(l);
                ffi::lua_pushlstring(l, msg.as_ptr() as *const c_char, msg.len());
                2
            }
        }
    }
}

fn to_lua(lua: &Lua, v: serde_json::Value) -> mlua::Result<Value> {
    Ok(match v {
        serde_json::Value::Null => Value::NULL,
        serde_json::Value::Bool(b) => Value::Boolean(b),
        serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for item in items {
                t.raw_push(to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, item) in map {
                t.raw_set(k, to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
    })
}

fn decode(lua: &Lua, s: &LuaString) -> mlua::Result<Value> {
    let json: serde_json::Value = serde_json::from_slice(&s.as_bytes()).map_err(|e| {
        mlua::Error::runtime(format!("Expected value but found invalid token: {e}"))
    })?;
    to_lua(lua, json)
}

fn module(lua: &Lua, safe: bool) -> mlua::Result<Table> {
    let m = lua.create_table()?;
    if safe {
        // SAFETY: a C function that follows the Lua C API's rules.
        m.raw_set("encode", unsafe { lua.create_c_function(encode_safe_c)? })?;
        m.raw_set(
            "decode",
            lua.create_function(|lua, s: LuaString| match decode(lua, &s) {
                Ok(v) => Ok((v, Value::Nil)),
                Err(e) => Ok((Value::Nil, Value::String(lua.create_string(e.to_string())?))),
            })?,
        )?;
    } else {
        // SAFETY: a C function that follows the Lua C API's rules.
        m.raw_set("encode", unsafe { lua.create_c_function(encode_c)? })?;
        m.raw_set(
            "decode",
            lua.create_function(|lua, s: LuaString| decode(lua, &s))?,
        )?;
    }
    m.raw_set("null", Value::NULL)?;
    m.raw_set("empty_array", empty_array())?;
    m.raw_set("array_mt", lua.array_metatable())?;
    m.raw_set("empty_array_mt", lua.array_metatable())?;
    // Configuration knobs accepted for compatibility; they do not change
    // this encoder.
    for knob in [
        "encode_empty_table_as_object",
        "encode_escape_forward_slash",
        "decode_array_with_array_mt",
        "encode_sparse_array",
        "encode_max_depth",
        "decode_max_depth",
        "encode_number_precision",
        "encode_keep_buffer",
        "encode_invalid_numbers",
        "decode_invalid_numbers",
    ] {
        m.raw_set(
            knob,
            lua.create_function(|_, _: mlua::MultiValue| Ok(true))?,
        )?;
    }
    Ok(m)
}

pub(super) fn install(lua: &Lua, loaded: &Table) -> mlua::Result<()> {
    lua.set_named_registry_value(
        ARRAY_MT_KEY.to_str().expect("ASCII key"),
        lua.array_metatable(),
    )?;
    let cjson = module(lua, false)?;
    let safe = module(lua, true)?;
    let new_plain = cjson.clone();
    cjson.raw_set(
        "new",
        lua.create_function(move |_, ()| Ok(new_plain.clone()))?,
    )?;
    let new_safe = safe.clone();
    safe.raw_set(
        "new",
        lua.create_function(move |_, ()| Ok(new_safe.clone()))?,
    )?;
    loaded.set("cjson", cjson)?;
    loaded.set("cjson.safe", safe)?;
    Ok(())
}
