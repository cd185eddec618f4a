//! Hashes, checksums, base64 and URI escaping for the `ngx` table
//! (`ngx.md5`, `ngx.sha1_bin`, `ngx.hmac_sha1`, `ngx.crc32_*`,
//! `ngx.encode_base64`, `ngx.escape_uri`, `ngx.encode_args`, ...), on
//! well-kept crates.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use mlua::{Lua, LuaString, Table, Value};
use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, percent_encode};
use sha1::Sha1;

/// Characters `ngx.escape_uri` escapes for a URI component (type 2).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Characters escaped in a whole URI (type 0).
const FULL_URI: &AsciiSet = &CONTROLS.add(b' ').add(b'#').add(b'%').add(b'?');

/// Formats a Lua number as LuaJIT's `tostring` does (`%.14g`).
pub(crate) fn fmt_number(n: f64) -> String {
    if n.is_nan() {
        return if n.is_sign_negative() { "-nan" } else { "nan" }.into();
    }
    if n.is_infinite() {
        return if n > 0.0 { "inf" } else { "-inf" }.into();
    }
    if n.fract() == 0.0 && n.abs() < 1e15 {
        return format!("{}", n as i64);
    }
    let sci = format!("{n:.13e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..14).contains(&exp) {
        let m = mantissa.trim_end_matches('0').trim_end_matches('.');
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.abs())
    } else {
        let decimals = usize::try_from(13 - exp).unwrap_or(0);
        let fixed = format!("{n:.decimals$}");
        if fixed.contains('.') {
            fixed.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            fixed
        }
    }
}

/// Percent-decodes, optionally turning `+` into a space; bad escapes are
/// kept as they are.
pub(crate) fn unescape(s: &[u8], plus_as_space: bool) -> Vec<u8> {
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' if i + 2 < s.len() => match (hex(s[i + 1]), hex(s[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_as_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Accepts what OpenResty accepts for a string argument: strings, numbers
/// (converted), and `nil` as the empty string.
fn arg_bytes(v: &Value) -> mlua::Result<Vec<u8>> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Integer(i) => Ok(i.to_string().into_bytes()),
        Value::Number(n) => Ok(fmt_number(*n).into_bytes()),
        Value::Nil => Ok(Vec::new()),
        other => Err(mlua::Error::runtime(format!(
            "bad argument #1 (string expected, got {})",
            other.type_name()
        ))),
    }
}

fn encode_arg_value(out: &mut String, key: &str, v: &Value) -> mlua::Result<()> {
    let mut push = |val: Option<Vec<u8>>| {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(key);
        if let Some(val) = val {
            out.push('=');
            out.extend(percent_encode(&val, COMPONENT));
        }
    };
    match v {
        Value::Boolean(true) => push(None),
        Value::Boolean(false) => {}
        Value::Table(t) => {
            for item in t.sequence_values::<Value>() {
                encode_arg_value(out, key, &item?)?;
            }
        }
        other => push(Some(arg_bytes(other)?)),
    }
    Ok(())
}

pub(super) fn install(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    ngx.raw_set(
        "md5",
        lua.create_function(|_, v: Value| Ok(hex(&Md5::digest(arg_bytes(&v)?))))?,
    )?;
    ngx.raw_set(
        "md5_bin",
        lua.create_function(|lua, v: Value| lua.create_string(Md5::digest(arg_bytes(&v)?)))?,
    )?;
    ngx.raw_set(
        "sha1_bin",
        lua.create_function(|lua, v: Value| lua.create_string(Sha1::digest(arg_bytes(&v)?)))?,
    )?;
    ngx.raw_set(
        "hmac_sha1",
        lua.create_function(|lua, (key, data): (Value, Value)| {
            let mut mac = Hmac::<Sha1>::new_from_slice(&arg_bytes(&key)?)
                .map_err(|e| mlua::Error::runtime(e.to_string()))?;
            mac.update(&arg_bytes(&data)?);
            lua.create_string(mac.finalize().into_bytes())
        })?,
    )?;
    let crc = |_: &Lua, v: Value| Ok(f64::from(crc32fast::hash(&arg_bytes(&v)?)));
    ngx.raw_set("crc32_short", lua.create_function(crc)?)?;
    ngx.raw_set("crc32_long", lua.create_function(crc)?)?;
    ngx.raw_set(
        "encode_base64",
        lua.create_function(|_, (v, no_padding): (Value, Option<bool>)| {
            let bytes = arg_bytes(&v)?;
            Ok(if no_padding == Some(true) {
                STANDARD_NO_PAD.encode(bytes)
            } else {
                STANDARD.encode(bytes)
            })
        })?,
    )?;
    ngx.raw_set(
        "decode_base64",
        lua.create_function(|lua, s: LuaString| {
            let bytes = s.as_bytes();
            let trimmed: &[u8] = &bytes;
            let decoded = if trimmed.len().is_multiple_of(4) {
                STANDARD.decode(trimmed)
            } else {
                STANDARD_NO_PAD.decode(trimmed)
            };
            match decoded {
                Ok(d) => Ok(Value::String(lua.create_string(d)?)),
                Err(_) => Ok(Value::Nil),
            }
        })?,
    )?;
    ngx.raw_set(
        "escape_uri",
        lua.create_function(|_, (v, kind): (Value, Option<i64>)| {
            let bytes = arg_bytes(&v)?;
            let set = if kind == Some(0) { FULL_URI } else { COMPONENT };
            Ok(percent_encode(&bytes, set).to_string())
        })?,
    )?;
    ngx.raw_set(
        "unescape_uri",
        lua.create_function(|lua, v: Value| lua.create_string(unescape(&arg_bytes(&v)?, true)))?,
    )?;
    ngx.raw_set(
        "encode_args",
        lua.create_function(|_, t: Table| {
            let mut out = String::new();
            for pair in t.pairs::<Value, Value>() {
                let (k, v) = pair?;
                let key = match &k {
                    Value::String(s) => percent_encode(&s.as_bytes(), COMPONENT).to_string(),
                    Value::Integer(i) => i.to_string(),
                    _ => {
                        return Err(mlua::Error::runtime(
                            "attempt to use a non-string key in encode_args",
                        ));
                    }
                };
                encode_arg_value(&mut out, &key, &v)?;
            }
            Ok(out)
        })?,
    )?;
    ngx.raw_set(
        "decode_args",
        lua.create_function(|lua, (s, max): (String, Option<usize>)| {
            let t = lua.create_table()?;
            let max = max.unwrap_or(100);
            for (n, pair) in s.split('&').filter(|p| !p.is_empty()).enumerate() {
                if max > 0 && n >= max {
                    break;
                }
                let (k, v) = match pair.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (pair, None),
                };
                let key = lua.create_string(unescape(k.as_bytes(), true))?;
                let val = match v {
                    Some(v) => Value::String(lua.create_string(unescape(v.as_bytes(), true))?),
                    None => Value::Boolean(true),
                };
                match t.raw_get::<Value>(&key)? {
                    Value::Nil => t.raw_set(key, val)?,
                    Value::Table(arr) => arr.raw_push(val)?,
                    old => t.raw_set(key, lua.create_sequence_from([old, val])?)?,
                }
            }
            Ok(t)
        })?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_like_luajit() {
        assert_eq!(fmt_number(1.0), "1");
        assert_eq!(fmt_number(0.5), "0.5");
        assert_eq!(fmt_number(-3.25), "-3.25");
        assert_eq!(fmt_number(1e20), "1e+20");
        assert_eq!(fmt_number(0.1), "0.1");
        assert_eq!(fmt_number(1.0 / 3.0), "0.33333333333333");
    }

    #[test]
    fn unescape_handles_bad_sequences() {
        assert_eq!(unescape(b"b%20r56+7", true), b"b r56 7");
        assert_eq!(unescape(b"%zz%4", true), b"%zz%4");
        assert_eq!(unescape(b"%41", false), b"A");
    }
}
