//! "The current request" and the raw Lua C API helpers the hot `ngx.*`
//! functions are written with.
//!
//! A VM runs one request's coroutine at a time on a thread; the runner
//! makes that request current for the thread ([`Current::enter`]) around
//! every resume. Functions read it with [`current`], so a call from Lua into
//! Rust costs a thread-local read instead of a lookup in the VM's app data.
//! The functions called on every request (`ngx.var`, `ngx.status`,
//! `ngx.header`, `ngx.print`, `ngx.exit`, the request body) are plain Lua C
//! functions over this: mlua's callback machinery (its error wrapper and
//! reference stack) costs more than the work they do.

use std::cell::Cell;
use std::os::raw::{c_char, c_int};
use std::ptr;

use mlua::{Function, IntoLuaMulti, Lua, ffi};

use crate::request::ReqState;

thread_local! {
    /// The request whose chunk this thread is running, or null.
    static CURRENT: Cell<*mut ReqState> = const { Cell::new(ptr::null_mut()) };
}

/// The error request APIs raise outside a request, as OpenResty words it.
pub(crate) const NO_REQUEST: &str = "API disabled in the current context";

/// Makes a request current on this thread until dropped; the previous one
/// (a nested run from a host callback) is current again after.
pub(crate) struct Current {
    prev: *mut ReqState,
}

impl Current {
    /// `st` must stay where it is until the guard drops.
    pub(crate) fn enter(st: &mut ReqState) -> Self {
        Self {
            prev: CURRENT.replace(st),
        }
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT.set(self.prev);
    }
}

/// Runs `f` on the current request, or returns `None` outside one. While
/// `f` runs the request is not current, so a re-entrant call (a finalizer
/// run by an allocation in `f`) finds no request instead of a second
/// mutable reference.
pub(crate) fn current<R>(f: impl FnOnce(&mut ReqState) -> R) -> Option<R> {
    struct Restore(*mut ReqState);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.set(self.0);
        }
    }
    let p = CURRENT.replace(ptr::null_mut());
    if p.is_null() {
        return None;
    }
    let _restore = Restore(p);
    // SAFETY: `p` was made current by `Current::enter` from a live
    // `&mut ReqState` that outlives the guard (the runner holds both across
    // one resume), and it is out of CURRENT while `f` runs, so this is the
    // only reference made from it.
    Some(f(unsafe { &mut *p }))
}

/// Runs `f` on the current request, or fails as OpenResty's request APIs do
/// outside a request.
pub(crate) fn with_req<R>(f: impl FnOnce(&mut ReqState) -> mlua::Result<R>) -> mlua::Result<R> {
    current(f).unwrap_or_else(|| Err(mlua::Error::runtime(NO_REQUEST)))
}

/// The bytes of the string (or number, converted in place) at `idx`.
///
/// # Safety
/// `idx` is a valid index on `l`'s stack holding a string or a number. The
/// slice lives as long as the value stays on the stack.
pub(crate) unsafe fn lua_bytes<'a>(l: *mut ffi::lua_State, idx: c_int) -> &'a [u8] {
    let mut len = 0usize;
    // SAFETY: see above; Lua keeps the string alive while it is on the stack.
    unsafe {
        let p = ffi::lua_tolstring(l, idx, &mut len);
        if p.is_null() {
            return &[];
        }
        std::slice::from_raw_parts(p as *const u8, len)
    }
}

/// Pushes `bytes` as a Lua string.
///
/// # Safety
/// `l` is a live state with a free stack slot.
pub(crate) unsafe fn push_bytes(l: *mut ffi::lua_State, bytes: &[u8]) {
    // SAFETY: see above.
    unsafe {
        ffi::lua_pushlstring(l, bytes.as_ptr() as *const c_char, bytes.len());
    }
}

/// Raises a Lua error with `msg`.
///
/// # Safety
/// Called from a C function of `l`, with nothing alive in the caller's
/// frame that needs dropping (the error unwinds past it).
pub(crate) unsafe fn raise(l: *mut ffi::lua_State, msg: &str) -> ! {
    // SAFETY: see above.
    unsafe {
        push_bytes(l, msg.as_bytes());
        ffi::lua_error(l)
    }
}

/// The string at `idx` if it is one (numbers are not converted).
///
/// # Safety
/// As [`lua_bytes`].
pub(crate) unsafe fn string_arg<'a>(l: *mut ffi::lua_State, idx: c_int) -> Option<&'a [u8]> {
    // SAFETY: see above.
    unsafe { (ffi::lua_type(l, idx) == ffi::LUA_TSTRING).then(|| lua_bytes(l, idx)) }
}

/// Calls the function in upvalue 1 with this call's arguments and returns
/// what it returns: the general (mlua) version of a C function that handles
/// only the common cases itself.
///
/// # Safety
/// Called from a C closure of `l` whose first upvalue is a function.
pub(crate) unsafe fn call_fallback(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: see above.
    unsafe {
        let nargs = ffi::lua_gettop(l);
        ffi::lua_pushvalue(l, ffi::lua_upvalueindex(1));
        ffi::lua_insert(l, 1);
        ffi::lua_call(l, nargs, ffi::LUA_MULTRET);
        ffi::lua_gettop(l)
    }
}

/// A C closure of `f` over `upvalues`.
pub(crate) fn c_closure(
    lua: &Lua,
    f: ffi::lua_CFunction,
    upvalues: impl IntoLuaMulti,
) -> mlua::Result<Function> {
    // SAFETY: the upvalues are on the stack when the closure runs; it
    // pushes one closure, which mlua takes as the result.
    unsafe {
        lua.exec_raw(upvalues, |l| {
            let n = ffi::lua_gettop(l);
            ffi::lua_pushcclosure(l, f, n);
        })
    }
}

/// A Lua number as an integer, when it is one exactly (mlua's rule, so
/// `-0.0` stays a float).
pub(crate) fn as_integer(n: f64) -> Option<i64> {
    let i = n as i64;
    (n >= i64::MIN as f64 && n < -(i64::MIN as f64) && (i as f64).to_bits() == n.to_bits())
        .then_some(i)
}
