//! The `cjson` and `cjson.safe` modules: JSON encoding of Lua values in the
//! way lua-cjson writes them (integers without a decimal point, escaped `/`,
//! empty tables as `{}`, sparse-array rules), decoding through `serde_json`.

use mlua::{LightUserData, Lua, LuaSerdeExt, LuaString, Table, Value};

use super::codec::fmt_number;

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

/// If a table with these entries is an array by lua-cjson's rules, its
/// length.
fn array_len(pairs: &[(Value, Value)]) -> Option<usize> {
    let mut max = 0usize;
    let mut count = 0usize;
    for (k, _) in pairs {
        let idx = match k {
            Value::Integer(i) if *i >= 1 => usize::try_from(*i).unwrap_or(usize::MAX),
            _ => return None,
        };
        max = max.max(idx);
        count += 1;
    }
    // Excessively sparse arrays are refused by cjson; we encode them as
    // objects instead of failing (ratio 2, safe below 10).
    if max > 10 && max > count * 2 {
        return None;
    }
    Some(max)
}

fn encode_into(lua: &Lua, out: &mut Vec<u8>, v: &Value, depth: usize) -> mlua::Result<()> {
    if depth > MAX_DEPTH {
        return Err(mlua::Error::runtime(format!(
            "Cannot serialise, excessive nesting ({depth})"
        )));
    }
    match v {
        Value::Nil => out.extend_from_slice(b"null"),
        Value::LightUserData(p) if p.0.is_null() => out.extend_from_slice(b"null"),
        Value::LightUserData(_) if *v == empty_array() => out.extend_from_slice(b"[]"),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Integer(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Value::Number(n) => {
            if !n.is_finite() {
                return Err(mlua::Error::runtime(
                    "Cannot serialise number: must not be NaN or Infinity",
                ));
            }
            out.extend_from_slice(fmt_number(*n).as_bytes());
        }
        Value::String(s) => escape_into(out, &s.as_bytes()),
        Value::Table(t) => {
            let is_array_mt = t.metatable().is_some_and(|mt| mt == lua.array_metatable());
            // One traversal: the entries decide array or object, and an
            // object is written from them.
            let mut pairs = Vec::new();
            let len = if is_array_mt {
                Some(t.raw_len())
            } else {
                pairs = t
                    .pairs::<Value, Value>()
                    .collect::<mlua::Result<Vec<_>>>()?;
                match array_len(&pairs) {
                    Some(0) => None,
                    other => other,
                }
            };
            match len {
                Some(len) => {
                    out.push(b'[');
                    for i in 1..=len {
                        if i > 1 {
                            out.push(b',');
                        }
                        encode_into(lua, out, &t.raw_get::<Value>(i)?, depth + 1)?;
                    }
                    out.push(b']');
                }
                None => {
                    out.push(b'{');
                    let mut first = true;
                    for (k, val) in pairs {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        match &k {
                            Value::String(s) => escape_into(out, &s.as_bytes()),
                            Value::Integer(i) => escape_into(out, i.to_string().as_bytes()),
                            Value::Number(n) => escape_into(out, fmt_number(*n).as_bytes()),
                            _ => {
                                return Err(mlua::Error::runtime(
                                    "Cannot serialise table: table key must be a number or string",
                                ));
                            }
                        }
                        out.push(b':');
                        encode_into(lua, out, &val, depth + 1)?;
                    }
                    out.push(b'}');
                }
            }
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "Cannot serialise {}: type not supported",
                other.type_name()
            )));
        }
    }
    Ok(())
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

fn encode(lua: &Lua, v: &Value) -> mlua::Result<LuaString> {
    let mut out = Vec::new();
    encode_into(lua, &mut out, v, 0)?;
    lua.create_string(out)
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
        m.raw_set(
            "encode",
            lua.create_function(|lua, v: Value| match encode(lua, &v) {
                Ok(s) => Ok((Value::String(s), Value::Nil)),
                Err(e) => Ok((Value::Nil, Value::String(lua.create_string(e.to_string())?))),
            })?,
        )?;
        m.raw_set(
            "decode",
            lua.create_function(|lua, s: LuaString| match decode(lua, &s) {
                Ok(v) => Ok((v, Value::Nil)),
                Err(e) => Ok((Value::Nil, Value::String(lua.create_string(e.to_string())?))),
            })?,
        )?;
    } else {
        m.raw_set(
            "encode",
            lua.create_function(|lua, v: Value| encode(lua, &v))?,
        )?;
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
