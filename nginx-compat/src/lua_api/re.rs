//! `ngx.re.match`, `find`, `gmatch`, `sub` and `gsub` on the `regex` crate.
//!
//! PCRE options are translated: `i` case-insensitive, `m` multi-line, `s`
//! dot-all, `x` extended, `u`/`U` Unicode, `a` anchored; `j`, `o`, `D`, `J`
//! are accepted and ignored (patterns are always compiled once and cached).
//! Without `u`, matching is bytewise with ASCII classes, as PCRE's default.
//! What `regex` does not support (look-around, back-references) fails to
//! compile and is reported as `nil, err`.

use std::collections::HashMap;
use std::sync::Arc;

use mlua::{Function, Lua, LuaString, Table, Value};
use regex::bytes::{Captures, Regex, RegexBuilder};

/// Compiled patterns by options, then pattern: two maps so that a lookup
/// borrows both and allocates nothing.
#[derive(Default)]
struct Cache {
    by_opts: HashMap<String, HashMap<Vec<u8>, Arc<Regex>>>,
    len: usize,
}

/// Enough for every pattern a set of access scripts uses; beyond it the
/// cache is cleared rather than grown without bound.
const CACHE_MAX: usize = 1024;

fn compile(lua: &Lua, pattern: &[u8], opts: &str) -> Result<Arc<Regex>, String> {
    if let Some(cache) = lua.app_data_ref::<Cache>()
        && let Some(re) = cache.by_opts.get(opts).and_then(|m| m.get(pattern))
    {
        return Ok(re.clone());
    }
    let pat = std::str::from_utf8(pattern).map_err(|_| "pattern is not valid UTF-8".to_owned())?;
    let mut anchored = false;
    let mut unicode = false;
    let mut builder_opts = Vec::new();
    for c in opts.chars() {
        match c {
            'i' => builder_opts.push('i'),
            'm' => builder_opts.push('m'),
            's' => builder_opts.push('s'),
            'x' => builder_opts.push('x'),
            'u' | 'U' => unicode = true,
            'a' => anchored = true,
            'j' | 'o' | 'D' | 'J' | 'd' => {}
            other => return Err(format!("unknown flag \"{other}\"")),
        }
    }
    let full = if anchored {
        format!(r"\A(?:{pat})")
    } else {
        pat.to_owned()
    };
    let mut b = RegexBuilder::new(&full);
    b.unicode(unicode)
        .case_insensitive(builder_opts.contains(&'i'))
        .multi_line(builder_opts.contains(&'m'))
        .dot_matches_new_line(builder_opts.contains(&'s'))
        .ignore_whitespace(builder_opts.contains(&'x'));
    let re = Arc::new(b.build().map_err(|e| {
        format!(
            "failed to compile regex \"{pat}\": {}",
            e.to_string().lines().last().unwrap_or("")
        )
    })?);
    if let Some(mut cache) = lua.app_data_mut::<Cache>() {
        if cache.len >= CACHE_MAX {
            cache.by_opts.clear();
            cache.len = 0;
        }
        let added = cache
            .by_opts
            .entry(opts.to_owned())
            .or_default()
            .insert(pattern.to_vec(), re.clone());
        if added.is_none() {
            cache.len += 1;
        }
    }
    Ok(re)
}

/// The captures table: `[0]` whole match, `[n]` groups (`false` when a group
/// did not take part), and named groups by name.
fn captures_table(
    lua: &Lua,
    re: &Regex,
    caps: &Captures,
    res: Option<Table>,
) -> mlua::Result<Table> {
    let t = match res {
        Some(t) => t,
        None => lua.create_table_with_capacity(caps.len(), 0)?,
    };
    for (i, m) in caps.iter().enumerate() {
        let v = match m {
            Some(m) => Value::String(lua.create_string(m.as_bytes())?),
            None => Value::Boolean(false),
        };
        t.raw_set(i, v.clone())?;
    }
    for (i, name) in re.capture_names().enumerate() {
        if let Some(name) = name {
            let v = match caps.get(i) {
                Some(m) => Value::String(lua.create_string(m.as_bytes())?),
                None => Value::Boolean(false),
            };
            t.raw_set(name, v)?;
        }
    }
    Ok(t)
}

/// Start offset from `ctx.pos` (1-based).
fn start_pos(ctx: &Option<Table>, len: usize) -> mlua::Result<usize> {
    let pos = match ctx {
        Some(ctx) => ctx.raw_get::<Option<i64>>("pos")?.unwrap_or(1),
        None => 1,
    };
    Ok(usize::try_from(pos.max(1) - 1).unwrap_or(0).min(len))
}

fn err_pair(lua: &Lua, e: String) -> mlua::Result<(Value, Value)> {
    Ok((Value::Nil, Value::String(lua.create_string(e)?)))
}

/// Expands a `sub`/`gsub` template: `$0`..`$9`, `${n}`, `${name}`, `$$`.
fn expand(template: &[u8], caps: &Captures, out: &mut Vec<u8>) -> Result<(), String> {
    let mut i = 0;
    while i < template.len() {
        let c = template[i];
        if c != b'$' {
            out.push(c);
            i += 1;
            continue;
        }
        match template.get(i + 1) {
            Some(b'$') => {
                out.push(b'$');
                i += 2;
            }
            Some(d) if d.is_ascii_digit() => {
                let mut j = i + 1;
                while j < template.len() && template[j].is_ascii_digit() {
                    j += 1;
                }
                let n: usize = std::str::from_utf8(&template[i + 1..j])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(usize::MAX);
                if let Some(m) = caps.get(n) {
                    out.extend_from_slice(m.as_bytes());
                }
                i = j;
            }
            Some(b'{') => {
                let end = template[i + 2..]
                    .iter()
                    .position(|&b| b == b'}')
                    .ok_or_else(|| "invalid capturing variable name".to_owned())?;
                let name = std::str::from_utf8(&template[i + 2..i + 2 + end])
                    .map_err(|_| "invalid capturing variable name".to_owned())?;
                let m = match name.parse::<usize>() {
                    Ok(n) => caps.get(n),
                    Err(_) => caps.name(name),
                };
                if let Some(m) = m {
                    out.extend_from_slice(m.as_bytes());
                }
                i += 3 + end;
            }
            _ => return Err("invalid capturing variable name".to_owned()),
        }
    }
    Ok(())
}

fn substitute(
    lua: &Lua,
    (subject, pattern, repl, opts): (LuaString, LuaString, Value, Option<String>),
    global: bool,
) -> mlua::Result<(Value, Value, Value)> {
    let re = match compile(lua, &pattern.as_bytes(), opts.as_deref().unwrap_or("")) {
        Ok(re) => re,
        Err(e) => return Ok((Value::Nil, Value::Nil, Value::String(lua.create_string(e)?))),
    };
    let subj = subject.as_bytes();
    let mut out = Vec::with_capacity(subj.len());
    let mut last = 0;
    let mut count = 0i64;
    for caps in re.captures_iter(&subj) {
        let Some(m) = caps.get(0) else { continue };
        out.extend_from_slice(&subj[last..m.start()]);
        match &repl {
            Value::Function(f) => {
                let t = captures_table(lua, &re, &caps, None)?;
                let r: Value = Function::call(f, t)?;
                match r {
                    Value::String(s) => out.extend_from_slice(&s.as_bytes()),
                    Value::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
                    Value::Number(n) => {
                        out.extend_from_slice(super::codec::fmt_number(n).as_bytes())
                    }
                    _ => {}
                }
            }
            Value::String(s) => {
                if let Err(e) = expand(&s.as_bytes(), &caps, &mut out) {
                    return Ok((Value::Nil, Value::Nil, Value::String(lua.create_string(e)?)));
                }
            }
            other => {
                return Err(mlua::Error::runtime(format!(
                    "bad argument #3 (string or function expected, got {})",
                    other.type_name()
                )));
            }
        }
        last = m.end();
        count += 1;
        if !global {
            break;
        }
    }
    out.extend_from_slice(&subj[last..]);
    Ok((
        Value::String(lua.create_string(out)?),
        Value::Integer(count),
        Value::Nil,
    ))
}

pub(super) fn install(lua: &Lua, ngx: &Table) -> mlua::Result<()> {
    lua.set_app_data(Cache::default());
    let re = lua.create_table()?;
    re.raw_set(
        "match",
        lua.create_function(
            |lua,
             (subject, pattern, opts, ctx, res): (
                LuaString,
                LuaString,
                Option<String>,
                Option<Table>,
                Option<Table>,
            )| {
                let re = match compile(lua, &pattern.as_bytes(), opts.as_deref().unwrap_or("")) {
                    Ok(re) => re,
                    Err(e) => return err_pair(lua, e),
                };
                let subj = subject.as_bytes();
                let start = start_pos(&ctx, subj.len())?;
                match re.captures_at(&subj, start) {
                    Some(caps) => {
                        if let (Some(ctx), Some(m)) = (&ctx, caps.get(0)) {
                            ctx.raw_set("pos", m.end() + 1)?;
                        }
                        Ok((
                            Value::Table(captures_table(lua, &re, &caps, res)?),
                            Value::Nil,
                        ))
                    }
                    None => Ok((Value::Nil, Value::Nil)),
                }
            },
        )?,
    )?;
    re.raw_set(
        "find",
        lua.create_function(
            |lua,
             (subject, pattern, opts, ctx, nth): (
                LuaString,
                LuaString,
                Option<String>,
                Option<Table>,
                Option<usize>,
            )| {
                let re = match compile(lua, &pattern.as_bytes(), opts.as_deref().unwrap_or("")) {
                    Ok(re) => re,
                    Err(e) => {
                        return Ok((Value::Nil, Value::Nil, Value::String(lua.create_string(e)?)));
                    }
                };
                let subj = subject.as_bytes();
                let start = start_pos(&ctx, subj.len())?;
                let Some(caps) = re.captures_at(&subj, start) else {
                    return Ok((Value::Nil, Value::Nil, Value::Nil));
                };
                if let (Some(ctx), Some(m)) = (&ctx, caps.get(0)) {
                    ctx.raw_set("pos", m.end() + 1)?;
                }
                match caps.get(nth.unwrap_or(0)) {
                    Some(m) => Ok((
                        Value::Integer(i64::try_from(m.start()).unwrap_or(0) + 1),
                        Value::Integer(i64::try_from(m.end()).unwrap_or(0)),
                        Value::Nil,
                    )),
                    None => Ok((Value::Nil, Value::Nil, Value::Nil)),
                }
            },
        )?,
    )?;
    re.raw_set(
        "gmatch",
        lua.create_function(
            |lua, (subject, pattern, opts): (LuaString, LuaString, Option<String>)| {
                let re = match compile(lua, &pattern.as_bytes(), opts.as_deref().unwrap_or("")) {
                    Ok(re) => re,
                    Err(e) => return err_pair(lua, e),
                };
                let mut pos = 0usize;
                let mut done = false;
                let iter = lua.create_function_mut(move |lua, ()| {
                    let subj = subject.as_bytes();
                    if done || pos > subj.len() {
                        return Ok(Value::Nil);
                    }
                    match re.captures_at(&subj, pos) {
                        Some(caps) => {
                            let (s, e) = caps.get(0).map_or((pos, pos), |m| (m.start(), m.end()));
                            // An empty match must still move forward.
                            pos = if e == s { e + 1 } else { e };
                            Ok(Value::Table(captures_table(lua, &re, &caps, None)?))
                        }
                        None => {
                            done = true;
                            Ok(Value::Nil)
                        }
                    }
                })?;
                Ok((Value::Function(iter), Value::Nil))
            },
        )?,
    )?;
    re.raw_set(
        "sub",
        lua.create_function(|lua, args| substitute(lua, args, false))?,
    )?;
    re.raw_set(
        "gsub",
        lua.create_function(|lua, args| substitute(lua, args, true))?,
    )?;
    ngx.raw_set("re", re)?;
    Ok(())
}
