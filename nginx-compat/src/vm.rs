//! The node-level [`Engine`] (shared dicts, clock, validated scripts, the
//! `init` chunk run once) and the per-thread [`LuaVm`] that runs the access
//! and log chunks for requests.
//!
//! Each request's chunk runs as its own Lua coroutine driven by mlua's async
//! support, so `ngx.sleep` suspends that request on tokio's timer while the
//! VM serves others; `ngx.exit` yields out of the coroutine and the runner
//! turns the recorded status into an [`AccessOutcome`].

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use mlua::{Function, Lua, LuaOptions, MultiValue, StdLib};

use crate::clock::Clock;
use crate::error::Error;
use crate::lua_api::{self, raw::Current};
use crate::request::{AccessOutcome, Phase, ReqState, Request, RequestCtx};
use crate::shdict::SharedDicts;

/// The Lua sources of one configuration of the edge.
#[derive(Debug, Clone, Default)]
pub struct Scripts {
    /// Runs once per node when the [`Engine`] is built (`init_by_lua`):
    /// shared-dict setup. Its globals are not seen by the worker VMs.
    pub init: Option<String>,
    /// Runs in every new VM (`init_worker_by_lua`): per-VM setup.
    pub init_worker: Option<String>,
    /// Runs for every request (`access_by_lua`); may answer the request.
    pub access: String,
    /// Runs after the response (`log_by_lua`).
    pub log: Option<String>,
    /// Directories searched by `require` (`dir/?.lua`, `dir/?/init.lua`),
    /// before the default `package.path`. Put the repository's `lua/` here
    /// so `require "resty.limit.req"` finds our modules.
    pub lua_dirs: Vec<PathBuf>,
    /// Module sources given by the host, found by `require` before
    /// `lua_dirs` (through `package.preload`) and compiled on first use in
    /// each VM. A host that reads its modules itself gives every VM of one
    /// configuration the same text, whatever changes on disk later.
    pub modules: Vec<Module>,
}

/// A Lua module's source, for [`Scripts::modules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The name `require` is called with (`resty.limit.conn`).
    pub name: String,
    /// The source text.
    pub source: Arc<str>,
    /// The chunk name in error messages and tracebacks (`@path/to/file.lua`
    /// shows as `path/to/file.lua:LINE:`).
    pub chunk_name: String,
}

impl Scripts {
    /// Scripts with just an access chunk and the repository's `lua/`
    /// directory on the search path.
    pub fn access(source: impl Into<String>) -> Self {
        Self {
            access: source.into(),
            lua_dirs: vec![default_lua_dir()],
            ..Self::default()
        }
    }
}

impl Scripts {
    /// Compiles every chunk in a throwaway VM without running any of them
    /// (no `init` side effects), for a `--check-config` style validation.
    pub fn check(&self) -> Result<(), Error> {
        let engine = Engine {
            inner: Arc::new(EngineInner {
                scripts: self.clone(),
                dicts: SharedDicts::default(),
                clock: Arc::new(crate::clock::SystemClock),
            }),
        };
        let vm = engine.build_vm(false)?;
        for (phase, src) in [("init", &self.init), ("init_worker", &self.init_worker)] {
            if let Some(src) = src {
                load(&vm.lua, src, phase)?;
            }
        }
        Ok(())
    }
}

/// The repository's `lua/` directory, as seen from this crate's sources.
pub fn default_lua_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("lua")
}

/// The result of the access phase for one request.
#[derive(Debug)]
pub struct Access {
    /// Forward or answer.
    pub outcome: AccessOutcome,
    /// The request's Lua state, to hand to [`LuaVm::run_log`] on the same VM.
    pub ctx: RequestCtx,
    /// A Lua error raised by the chunk; the outcome is then a 500 answer, as
    /// OpenResty gives.
    pub error: Option<Error>,
}

struct EngineInner {
    scripts: Scripts,
    dicts: SharedDicts,
    clock: Arc<dyn Clock>,
}

/// One edge node's Lua configuration: its shared dicts, clock and scripts.
/// Cheap to clone; build one [`LuaVm`] per worker thread from it.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Validates every chunk by loading it into a VM, then runs `init` in
    /// that VM. Any failure is returned, so a caller reloading can keep its
    /// previous engine.
    pub fn new(scripts: Scripts, dicts: SharedDicts, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        let engine = Self {
            inner: Arc::new(EngineInner {
                scripts,
                dicts,
                clock,
            }),
        };
        let vm = engine.build_vm(false)?;
        if let Some(init) = &engine.inner.scripts.init {
            let f = load(&vm.lua, init, "init")?;
            f.call::<()>(()).map_err(|source| Error::Load {
                phase: "init",
                source,
            })?;
        }
        Ok(engine)
    }

    /// A new engine with new scripts and the same dicts and clock (dict
    /// contents survive a reload, as with nginx's HUP).
    pub fn reload(&self, scripts: Scripts) -> Result<Self, Error> {
        Self::new(scripts, self.inner.dicts.clone(), self.inner.clock.clone())
    }

    /// A VM for one worker thread, with `init_worker` run in it.
    pub fn new_vm(&self) -> Result<LuaVm, Error> {
        self.build_vm(true)
    }

    /// The node's shared dicts.
    pub fn dicts(&self) -> &SharedDicts {
        &self.inner.dicts
    }

    fn build_vm(&self, run_init_worker: bool) -> Result<LuaVm, Error> {
        let scripts = &self.inner.scripts;
        // SAFETY: mlua's safe constructors refuse the FFI library because FFI
        // code can corrupt memory. OpenResty enables it and the scripts we
        // must run unchanged (and lua-resty-limit-traffic style modules)
        // `require "ffi"`; the scripts are operator configuration, trusted
        // like nginx.conf, never user input.
        let lua =
            unsafe { Lua::unsafe_new_with(StdLib::ALL_SAFE | StdLib::FFI, LuaOptions::default()) };
        lua_api::install(&lua, &self.inner.dicts, self.inner.clock.clone())?;
        let package: mlua::Table = lua.globals().get("package")?;
        let mut path = String::new();
        for dir in &scripts.lua_dirs {
            let dir = dir.to_string_lossy();
            path.push_str(&format!("{dir}/?.lua;{dir}/?/init.lua;"));
        }
        let default_path: String = package.get("path")?;
        package.set("path", format!("{path}{default_path}"))?;
        if !scripts.modules.is_empty() {
            // The loader is Lua so that errors raised while a module runs
            // reach `require`'s caller as plain Lua errors.
            let make: Function = lua
                .load(
                    "local compile = ...
                     return function(...)
                       local f, err = compile()
                       if not f then error(err, 0) end
                       return f(...)
                     end",
                )
                .set_name("=preload")
                .into_function()?;
            let preload: mlua::Table = package.get("preload")?;
            for m in &scripts.modules {
                let (source, chunk_name) = (m.source.clone(), m.chunk_name.clone());
                let compile = lua.create_function(move |lua, ()| {
                    Ok(
                        match lua
                            .load(&*source)
                            .set_name(chunk_name.as_str())
                            .into_function()
                        {
                            Ok(f) => (Some(f), None),
                            Err(mlua::Error::SyntaxError { message, .. }) => (None, Some(message)),
                            Err(e) => (None, Some(e.to_string())),
                        },
                    )
                })?;
                preload.set(m.name.as_str(), make.call::<Function>(compile)?)?;
            }
        }

        let access = load(&lua, &scripts.access, "access")?;
        let log = scripts
            .log
            .as_deref()
            .map(|src| load(&lua, src, "log"))
            .transpose()?;
        if run_init_worker && let Some(src) = &scripts.init_worker {
            lua_api::set_phase(&lua, "init_worker");
            load(&lua, src, "init_worker")?
                .call::<()>(())
                .map_err(|source| Error::Load {
                    phase: "init_worker",
                    source,
                })?;
        }
        Ok(LuaVm {
            lua,
            turn: parking_lot::ReentrantMutex::new(()),
            access,
            log,
            clock: self.inner.clock.clone(),
        })
    }
}

fn load(lua: &Lua, src: &str, phase: &'static str) -> Result<Function, Error> {
    lua.load(src)
        .set_name(format!("={phase}"))
        .into_function()
        .map_err(|source| Error::Load { phase, source })
}

/// One Lua state with the `ngx` API, for one worker thread. It is `Send`
/// and may run many requests concurrently (they interleave at `ngx.sleep`).
pub struct LuaVm {
    lua: Lua,
    /// Held while one request's coroutine is resumed (see `run_chunk`).
    turn: parking_lot::ReentrantMutex<()>,
    access: Function,
    log: Option<Function>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for LuaVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuaVm").finish_non_exhaustive()
    }
}

impl LuaVm {
    /// Runs the access chunk for `req`.
    pub async fn run_access(&self, req: Request) -> Access {
        let now = self.clock.now().as_secs_f64();
        let state = Box::new(ReqState::new(req, now));
        let (mut state, result) = self.run_chunk(&self.access, state).await;
        let (outcome, error) = match result {
            Ok(()) => (outcome_of(&mut state), None),
            Err(source) => (
                AccessOutcome::Respond {
                    status: 500,
                    headers: Vec::new(),
                    body: Vec::new(),
                },
                Some(Error::Runtime {
                    phase: "access",
                    source,
                }),
            ),
        };
        Access {
            outcome,
            ctx: RequestCtx { state },
            error,
        }
    }

    /// Runs the log chunk (if any) after the response was sent with
    /// `status`, `request_time` seconds after the request started.
    pub async fn run_log(
        &self,
        ctx: RequestCtx,
        status: u16,
        request_time: f64,
    ) -> Result<(), Error> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        let mut state = ctx.state;
        state.phase = Phase::Log;
        state.status = Some(status);
        state.request_time = Some(request_time);
        state.exit = None;
        let (_, result) = self.run_chunk(log, state).await;
        result.map_err(|source| Error::Runtime {
            phase: "log",
            source,
        })
    }

    /// Whether a log chunk is configured: a host may skip keeping the
    /// request's state for [`LuaVm::run_log`] when there is none.
    pub fn has_log(&self) -> bool {
        self.log.is_some()
    }

    /// The underlying Lua state, for hosts that add their own functions.
    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    /// Runs `func` as a coroutine for the request in `state`, installing the
    /// state as "the current request" around every resume.
    async fn run_chunk(
        &self,
        func: &Function,
        mut state: Box<ReqState>,
    ) -> (Box<ReqState>, mlua::Result<()>) {
        let thread = match self.lua.create_thread(func.clone()) {
            Ok(t) => t,
            Err(e) => return (state, Err(e)),
        };
        let mut stream = match thread.clone().into_async::<MultiValue>(()) {
            Ok(s) => s,
            Err(e) => return (state, Err(e)),
        };
        let result = std::future::poll_fn(|cx| {
            // Like nginx, time is cached per event-loop turn: refreshed when
            // the request resumes, constant while its Lua code runs.
            state.now = self.clock.now().as_secs_f64();
            // The request is current for the whole resume: other threads
            // sharing the VM wait for their turn, and a nested run on this
            // thread (a host callback) leaves it current again after.
            let _turn = self.turn.lock();
            let _current = Current::enter(&mut state);
            Pin::new(&mut stream).poll_next(cx)
        })
        .await;
        drop(stream);
        let result = match result {
            Some(Err(e)) => Err(e),
            // Finished, or yielded by ngx.exit: either way the phase is over.
            Some(Ok(_)) | None => Ok(()),
        };
        (state, result)
    }
}

/// Turns what the chunk did (`ngx.exit`, output, `ngx.status`) into the
/// host's decision.
fn outcome_of(st: &mut ReqState) -> AccessOutcome {
    let status = match st.exit {
        Some(code) if code >= 200 => Some(if st.body_started {
            st.status.unwrap_or(200)
        } else {
            u16::try_from(code).unwrap_or(500)
        }),
        Some(-1) => Some(500),
        _ if st.body_started => Some(st.status.unwrap_or(200)),
        _ => None,
    };
    match status {
        Some(status) => {
            st.status = Some(status);
            AccessOutcome::Respond {
                status,
                headers: std::mem::take(&mut st.resp_headers),
                body: std::mem::take(&mut st.body),
            }
        }
        None => AccessOutcome::Continue {
            set_headers: std::mem::take(&mut st.set_headers),
            cleared_headers: std::mem::take(&mut st.cleared_headers),
            response_headers: std::mem::take(&mut st.resp_headers),
        },
    }
}
