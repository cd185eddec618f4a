//! The Lua face of `ngx.shared.DICT`: a userdata per dict whose methods map
//! the Rust [`SharedDict`] results onto OpenResty's return conventions
//! (`ok, err, forcible`; `nil, "not found"`; values then flags).

use std::sync::Arc;

use mlua::{IntoLuaMulti, Lua, MultiValue, Table, UserData, UserDataMethods, Value};

use super::codec::fmt_number;
use crate::shdict::{DictError, DictValue, SetMode, SharedDict, SharedDicts};

/// A dict as seen from Lua.
pub(crate) struct DictHandle(pub(crate) Arc<SharedDict>);

enum KeyError {
    Nil,
    BadType,
}

/// Runs `f` on the key's bytes (numbers are keys by their string form).
fn with_key<R>(key: &Value, f: impl FnOnce(&[u8]) -> R) -> Result<R, KeyError> {
    match key {
        Value::String(s) => Ok(f(&s.as_bytes())),
        Value::Integer(i) => Ok(f(i.to_string().as_bytes())),
        Value::Number(n) => Ok(f(fmt_number(*n).as_bytes())),
        Value::Nil => Err(KeyError::Nil),
        _ => Err(KeyError::BadType),
    }
}

fn key_err(lua: &Lua, e: KeyError) -> mlua::Result<MultiValue> {
    let msg = match e {
        KeyError::Nil => "nil key",
        KeyError::BadType => "bad key type",
    };
    (Value::Nil, msg).into_lua_multi(lua)
}

fn to_dict_value(v: Value) -> mlua::Result<Option<DictValue>> {
    Ok(match v {
        Value::Nil => None,
        Value::Boolean(b) => Some(DictValue::Bool(b)),
        Value::Integer(i) => Some(DictValue::Number(i as f64)),
        Value::Number(n) => Some(DictValue::Number(n)),
        Value::String(s) => Some(DictValue::Bytes(s.as_bytes().to_vec())),
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad value type: {}",
                other.type_name()
            )));
        }
    })
}

fn to_lua(lua: &Lua, v: DictValue) -> mlua::Result<Value> {
    Ok(match v {
        DictValue::Bool(b) => Value::Boolean(b),
        DictValue::Number(n) => Value::Number(n),
        DictValue::Bytes(b) => Value::String(lua.create_string(b)?),
    })
}

fn num_arg(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Number(n) => Some(*n),
        Value::String(s) => s.to_str().ok()?.trim().parse().ok(),
        _ => None,
    }
}

fn exptime_arg(v: Option<f64>) -> mlua::Result<f64> {
    match v {
        Some(t) if t < 0.0 || t.is_nan() => Err(mlua::Error::runtime("bad \"exptime\" argument")),
        Some(t) => Ok(t),
        None => Ok(0.0),
    }
}

fn store(
    lua: &Lua,
    dict: &SharedDict,
    (key, value, exptime, flags): (Value, Value, Option<f64>, Option<u32>),
    mode: SetMode,
) -> mlua::Result<MultiValue> {
    let value = to_dict_value(value)?;
    let exptime = exptime_arg(exptime)?;
    let flags = flags.unwrap_or(0);
    match with_key(&key, |k| dict.store(k, value, exptime, flags, mode)) {
        Err(e) => key_err(lua, e),
        Ok(Ok(forcible)) => (true, Value::Nil, forcible).into_lua_multi(lua),
        Ok(Err((e, forcible))) => (false, e.to_string(), forcible).into_lua_multi(lua),
    }
}

fn err(lua: &Lua, e: DictError) -> mlua::Result<MultiValue> {
    (Value::Nil, e.to_string()).into_lua_multi(lua)
}

impl UserData for DictHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        for (name, stale) in [("get", false), ("get_stale", true)] {
            methods.add_method(name, move |lua, this, key: Value| {
                match with_key(&key, |k| this.0.get(k, stale)) {
                    Err(e) => key_err(lua, e),
                    Ok(Ok(None)) => Value::Nil.into_lua_multi(lua),
                    Ok(Ok(Some(got))) => {
                        let v = to_lua(lua, got.value)?;
                        let flags = if got.flags == 0 {
                            Value::Nil
                        } else {
                            Value::Integer(i64::from(got.flags))
                        };
                        if stale {
                            (v, flags, got.stale).into_lua_multi(lua)
                        } else if got.flags == 0 {
                            v.into_lua_multi(lua)
                        } else {
                            (v, flags).into_lua_multi(lua)
                        }
                    }
                    Ok(Err(e)) => err(lua, e),
                }
            });
        }
        for (name, mode) in [
            ("set", SetMode::Set),
            ("safe_set", SetMode::SafeSet),
            ("add", SetMode::Add),
            ("safe_add", SetMode::SafeAdd),
            ("replace", SetMode::Replace),
        ] {
            methods.add_method(name, move |lua, this, args| store(lua, &this.0, args, mode));
        }
        methods.add_method("delete", |lua, this, key: Value| {
            match with_key(&key, |k| this.0.delete(k)) {
                Err(e) => key_err(lua, e),
                Ok(_) => true.into_lua_multi(lua),
            }
        });
        methods.add_method(
            "incr",
            |lua, this, (key, delta, init, init_ttl): (Value, Value, Value, Option<f64>)| {
                let Some(delta) = num_arg(&delta) else {
                    return (Value::Nil, "value not a number").into_lua_multi(lua);
                };
                let init = match init {
                    Value::Nil => None,
                    v => match num_arg(&v) {
                        Some(n) => Some(n),
                        None => return (Value::Nil, "init not a number").into_lua_multi(lua),
                    },
                };
                let init_ttl = exptime_arg(init_ttl)?;
                match with_key(&key, |k| this.0.incr(k, delta, init, init_ttl)) {
                    Err(e) => key_err(lua, e),
                    Ok(Ok((n, forcible))) => {
                        if init.is_some() {
                            (n, Value::Nil, forcible).into_lua_multi(lua)
                        } else {
                            (n, Value::Nil).into_lua_multi(lua)
                        }
                    }
                    Ok(Err(e)) => err(lua, e),
                }
            },
        );
        methods.add_method(
            "expire",
            |lua, this, (key, exptime): (Value, Option<f64>)| {
                let exptime = exptime_arg(exptime)?;
                match with_key(&key, |k| this.0.expire(k, exptime)) {
                    Err(e) => key_err(lua, e),
                    Ok(Ok(())) => true.into_lua_multi(lua),
                    Ok(Err(e)) => err(lua, e),
                }
            },
        );
        methods.add_method("ttl", |lua, this, key: Value| {
            match with_key(&key, |k| this.0.ttl(k)) {
                Err(e) => key_err(lua, e),
                Ok(Ok(t)) => t.into_lua_multi(lua),
                Ok(Err(e)) => err(lua, e),
            }
        });
        methods.add_method("flush_all", |_, this, ()| {
            this.0.flush_all();
            Ok(())
        });
        methods.add_method("flush_expired", |_, this, max: Option<usize>| {
            Ok(this.0.flush_expired(max.unwrap_or(0)))
        });
        methods.add_method("get_keys", |lua, this, max: Option<usize>| {
            let keys = this.0.keys(max.unwrap_or(1024));
            let t = lua.create_table_with_capacity(keys.len(), 0)?;
            for k in keys {
                t.raw_push(lua.create_string(k)?)?;
            }
            Ok(t)
        });
        methods.add_method("capacity", |_, this, ()| Ok(this.0.capacity()));
        methods.add_method("free_space", |_, this, ()| Ok(this.0.free_space()));
        for (name, front) in [("lpush", true), ("rpush", false)] {
            methods.add_method(name, move |lua, this, (key, value): (Value, Value)| {
                let value = match value {
                    Value::String(_) | Value::Integer(_) | Value::Number(_) => {
                        to_dict_value(value)?
                    }
                    _ => return (Value::Nil, "bad value type").into_lua_multi(lua),
                };
                let Some(value) = value else {
                    return (Value::Nil, "bad value type").into_lua_multi(lua);
                };
                match with_key(&key, |k| this.0.push(k, value, front)) {
                    Err(e) => key_err(lua, e),
                    Ok(Ok(n)) => n.into_lua_multi(lua),
                    Ok(Err(e)) => err(lua, e),
                }
            });
        }
        for (name, front) in [("lpop", true), ("rpop", false)] {
            methods.add_method(name, move |lua, this, key: Value| {
                match with_key(&key, |k| this.0.pop(k, front)) {
                    Err(e) => key_err(lua, e),
                    Ok(Ok(Some(v))) => to_lua(lua, v)?.into_lua_multi(lua),
                    Ok(Ok(None)) => Value::Nil.into_lua_multi(lua),
                    Ok(Err(e)) => err(lua, e),
                }
            });
        }
        methods.add_method("llen", |lua, this, key: Value| {
            match with_key(&key, |k| this.0.llen(k)) {
                Err(e) => key_err(lua, e),
                Ok(Ok(n)) => n.into_lua_multi(lua),
                Ok(Err(e)) => err(lua, e),
            }
        });
    }
}

pub(super) fn install(lua: &Lua, ngx: &Table, dicts: &SharedDicts) -> mlua::Result<()> {
    let shared = lua.create_table()?;
    for dict in dicts.iter() {
        shared.raw_set(dict.name(), lua.create_userdata(DictHandle(dict.clone()))?)?;
    }
    ngx.raw_set("shared", shared)?;
    Ok(())
}
