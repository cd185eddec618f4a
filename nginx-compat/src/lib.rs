//! OpenResty's `ngx` Lua API on LuaJIT (mlua), so that access scripts
//! written for `access_by_lua` with `ngx.shared.DICT` and
//! lua-resty-limit-traffic style modules run unchanged at our edge.
//!
//! Layout:
//! - [`clock`]: the time source shared by dict TTLs and `ngx.now`.
//! - [`shdict`]: `ngx.shared.DICT` implemented in Rust, node-wide.
//! - [`request`]: what the host passes in and gets back per request.
//! - [`uri`]: nginx's `$uri` normalisation.
//! - [`vm`]: [`Engine`] (one per node) and [`LuaVm`] (one per worker
//!   thread) running the `init`, access and log chunks.
//! - `lua_api`: the `ngx` table, `cjson`, and their bindings.
//!
//! The Lua state is created with `Lua::unsafe_new_with(ALL_SAFE | FFI)`:
//! mlua's safe constructors refuse the FFI library, but OpenResty has it and
//! the scripts we promise to run unchanged use `require "ffi"`. The scripts
//! are operator configuration, trusted like nginx.conf.
//!
//! Typical use by the edge:
//!
//! ```no_run
//! # async fn demo() -> Result<(), nginx_compat::Error> {
//! use std::sync::Arc;
//! use nginx_compat::{AccessOutcome, Engine, Request, Scripts, SharedDicts, SystemClock};
//!
//! let clock = Arc::new(SystemClock);
//! let dicts = SharedDicts::new([("limits", 1 << 20)], clock.clone())?;
//! let engine = Engine::new(Scripts::access("return"), dicts, clock)?;
//! let vm = engine.new_vm()?; // one per worker thread
//! let access = vm.run_access(Request::new("GET", "/api/time")).await;
//! if let AccessOutcome::Respond { status, .. } = &access.outcome {
//!     println!("answered {status} at the edge");
//! }
//! vm.run_log(access.ctx, 200, 0.001).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod clock;
pub mod error;
mod lua_api;
pub mod request;
pub mod shdict;
pub mod uri;
pub mod vm;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::Error;
pub use lua_api::{NGINX_VERSION, NGX_LUA_VERSION};
pub use request::{AccessOutcome, Request, RequestCtx};
pub use shdict::{DictError, DictValue, SetMode, SharedDict, SharedDicts};
pub use uri::UriError;
pub use vm::{Access, Engine, LuaVm, Module, Scripts, default_lua_dir};
