//! The Lua access phase: the operator's scripts on nginx-compat, one Lua VM
//! per worker thread, hot-reloaded when the files change.
//!
//! The access file (`lua.access`) is the access chunk; every other `*.lua`
//! file in its directory becomes the module `edge.<name>` (so
//! `require "edge.limits"` reads `limits.lua`). Sources are read by the
//! edge and preloaded into each VM, so all VMs of one generation run the
//! same validated text. On reload the new files are compiled, `edge.check`
//! (if present) runs in a fresh VM, and one worker VM is built; any failure
//! refuses the files, logs why, and the previous generation keeps serving.
//! Connections are never dropped: threads switch to the new VMs on their
//! next request; shared dicts (limiter state) carry over.
//!
//! Host functions (the `seckill` table: `permit`, `token_bucket`) are added
//! to each VM here. The
//! permit taken by `seckill.permit` is recorded for the proxy through a
//! task-local slot, so a script cannot lose it.

use std::{
    cell::RefCell,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use nginx_compat::{AccessOutcome, Engine, LuaVm, Request, Scripts, SharedDicts, SystemClock};

use crate::{
    config::LuaConfig,
    metrics::Metrics,
    permits::{Effect, Permit, Permits, Verdict},
    rate::TokenBuckets,
};

/// Why Lua files were refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Lua(#[from] nginx_compat::Error),
    #[error("installing host functions: {0}")]
    Host(#[from] mlua::Error),
}

/// The result of the access phase for one request.
#[derive(Debug)]
pub struct Decision {
    pub outcome: AccessOutcome,
    /// Permits the script took (normally at most one).
    pub permits: Vec<Permit>,
    /// `ngx.var.seckill_reason`, naming a rejection for metrics.
    pub reason: Option<String>,
    /// The script raised a Lua error (the outcome is then a 500).
    pub error: Option<String>,
}

tokio::task_local! {
    static PERMIT_SLOT: Arc<Mutex<Vec<Permit>>>;
}

thread_local! {
    static VM: RefCell<Option<(u64, Arc<LuaVm>)>> = const { RefCell::new(None) };
}

/// Process-wide so VMs of two instances in one process never mix.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// The node's Lua configuration and its current generation.
pub struct LuaAccess {
    cfg: LuaConfig,
    engine: RwLock<Engine>,
    generation: AtomicU64,
    permits: Option<Permits>,
    buckets: Arc<TokenBuckets>,
    metrics: Metrics,
    /// The sources last seen on disk (loaded or refused).
    seen: Mutex<Vec<(PathBuf, String)>>,
}

impl LuaAccess {
    /// Loads and validates the Lua files; fails if they do not load.
    pub fn new(
        cfg: &LuaConfig,
        permits: Option<Permits>,
        metrics: Metrics,
    ) -> Result<Self, AccessError> {
        let dicts = SharedDicts::new(
            cfg.dicts.iter().map(|(n, s)| (n.as_str(), *s)),
            Arc::new(SystemClock),
        )?;
        let sources = read_sources(&cfg.access)?;
        let scripts = scripts_of(cfg, &sources);
        let engine = Engine::new(scripts, dicts, Arc::new(SystemClock))?;
        let me = Self {
            cfg: cfg.clone(),
            engine: RwLock::new(engine.clone()),
            generation: AtomicU64::new(GENERATIONS.fetch_add(1, Ordering::Relaxed)),
            permits,
            buckets: Arc::default(),
            metrics,
            seen: Mutex::new(sources),
        };
        // A VM must build (init_worker runs) before we serve with it.
        me.build_vm(&engine)?;
        Ok(me)
    }

    /// Validates the Lua files without keeping anything (`check-config`).
    pub fn check(cfg: &LuaConfig) -> Result<(), AccessError> {
        let dicts = SharedDicts::new(
            cfg.dicts.iter().map(|(n, s)| (n.as_str(), *s)),
            Arc::new(SystemClock),
        )?;
        let sources = read_sources(&cfg.access)?;
        let engine = Engine::new(scripts_of(cfg, &sources), dicts, Arc::new(SystemClock))?;
        let vm = engine.new_vm()?;
        install_host_api(&vm, None, Arc::default())?;
        Ok(())
    }

    fn build_vm(&self, engine: &Engine) -> Result<LuaVm, AccessError> {
        let vm = engine.new_vm()?;
        install_host_api(&vm, self.permits.clone(), self.buckets.clone())?;
        Ok(vm)
    }

    /// This thread's VM for the current generation.
    fn vm(&self) -> Result<Arc<LuaVm>, AccessError> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(vm) = VM.with(|c| {
            c.borrow()
                .as_ref()
                .filter(|(g, _)| *g == generation)
                .map(|(_, vm)| vm.clone())
        }) {
            return Ok(vm);
        }
        let engine = self.engine.read().expect("engine lock").clone();
        let vm = Arc::new(self.build_vm(&engine)?);
        VM.with(|c| *c.borrow_mut() = Some((generation, vm.clone())));
        Ok(vm)
    }

    /// Runs the access chunk for `req`.
    pub async fn run(&self, req: Request) -> Decision {
        let vm = match self.vm() {
            Ok(vm) => vm,
            Err(e) => {
                return Decision {
                    outcome: AccessOutcome::Respond {
                        status: 500,
                        headers: Vec::new(),
                        body: Vec::new(),
                    },
                    permits: Vec::new(),
                    reason: Some("lua_error".into()),
                    error: Some(e.to_string()),
                };
            }
        };
        let slot = Arc::new(Mutex::new(Vec::new()));
        let access = PERMIT_SLOT.scope(slot.clone(), vm.run_access(req)).await;
        let permits = std::mem::take(&mut *slot.lock().expect("slot lock"));
        let reason = access.ctx.request().vars.get("seckill_reason").cloned();
        Decision {
            outcome: access.outcome,
            permits,
            reason,
            error: access.error.map(|e| e.to_string()),
        }
    }

    /// Reloads the Lua files if they changed on disk. Returns `Some(Ok)`
    /// when a new generation serves, `Some(Err)` when the files were
    /// refused, `None` when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<(), AccessError>> {
        let sources = match read_sources(&self.cfg.access) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        {
            let mut seen = self.seen.lock().expect("seen lock");
            if *seen == sources {
                return None;
            }
            *seen = sources.clone();
        }
        let result = (|| {
            let current = self.engine.read().expect("engine lock").clone();
            let engine = current.reload(scripts_of(&self.cfg, &sources))?;
            self.build_vm(&engine)?;
            *self.engine.write().expect("engine lock") = engine;
            self.generation.store(
                GENERATIONS.fetch_add(1, Ordering::Relaxed),
                Ordering::Release,
            );
            Ok(())
        })();
        match &result {
            Ok(()) => {
                self.metrics.reload("ok");
                tracing::info!("lua files reloaded");
            }
            Err(e) => {
                self.metrics.reload("refused");
                tracing::error!(error = %e, "lua files refused; the previous version keeps serving");
            }
        }
        Some(result)
    }

    /// Polls the files every `lua.reload_interval_ms` until `shutdown`.
    pub async fn watch(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let every = Duration::from_millis(self.cfg.reload_interval_ms);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let me = self.clone();
            // File reads and Lua compilation stay off the async workers.
            let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
        }
    }
}

/// The access file, then the other `*.lua` files of its directory (sorted).
fn read_sources(access: &Path) -> Result<Vec<(PathBuf, String)>, AccessError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| AccessError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut out = vec![(access.to_path_buf(), read(access)?)];
    let dir = access.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut others: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| AccessError::Read {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "lua") && p.file_name() != access.file_name()
        })
        .collect();
    others.sort();
    for p in others {
        let src = read(&p)?;
        out.push((p, src));
    }
    Ok(out)
}

/// Lua long-bracket literal of `s` at a level that `s` does not close.
fn long_string(s: &str) -> String {
    let mut eq = String::new();
    loop {
        let close = format!("]{eq}]");
        if !s.contains(&close) && !s.ends_with(&format!("]{eq}")) {
            return format!("[{eq}[\n{s}]{eq}]");
        }
        eq.push('=');
    }
}

fn scripts_of(cfg: &LuaConfig, sources: &[(PathBuf, String)]) -> Scripts {
    let mut preload = String::new();
    let mut has_check = false;
    for (path, src) in sources.iter().skip(1) {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("x");
        has_check |= stem == "check";
        preload.push_str(&format!(
            "package.preload[\"edge.{stem}\"] = assert(load({}, \"=edge/{stem}.lua\"))\n",
            long_string(src)
        ));
    }
    let mut init = preload.clone();
    if has_check {
        init.push_str("require \"edge.check\"\n");
    }
    Scripts {
        init: Some(init),
        init_worker: Some(preload),
        access: sources[0].1.clone(),
        log: None,
        lua_dirs: cfg.lib_dirs.clone(),
    }
}

/// Turns a verdict into what `seckill.permit` returns, recording granted
/// permits for the current request.
fn answer(permits: &Permits, v: Verdict) -> (&'static str, Option<u64>) {
    match v {
        Verdict::Granted(p) => {
            let kept = PERMIT_SLOT
                .try_with(|slot| slot.lock().expect("slot lock").push(p))
                .is_ok();
            if !kept {
                // Not inside a request: nothing was forwarded.
                permits.finish(p, Some(Effect::Kept));
            }
            ("ok", None)
        }
        Verdict::SoldOut => ("sold_out", None),
        Verdict::Insufficient(n) => ("insufficient", Some(n.max(0) as u64)),
        Verdict::Wait(ms) => ("wait", Some(ms)),
        Verdict::Unknown => ("unknown", None),
        Verdict::Unavailable(ms) => ("unavailable", Some(ms)),
    }
}

/// Most units one `seckill.permit` call may take (the policy's own limit,
/// `limits.max_qty` in the default policy, is meant to be far lower).
const MAX_UNITS: i64 = 1_000;

/// The units a script asks permits for: 1 when it names none.
fn units(qty: Option<i64>) -> mlua::Result<i64> {
    match qty {
        None => Ok(1),
        Some(q) if (1..=MAX_UNITS).contains(&q) => Ok(q),
        Some(q) => Err(mlua::Error::runtime(format!(
            "permit: qty must be 1..={MAX_UNITS}, got {q}"
        ))),
    }
}

/// Adds the `seckill` table to a VM.
fn install_host_api(
    vm: &LuaVm,
    permits: Option<Permits>,
    buckets: Arc<TokenBuckets>,
) -> Result<(), mlua::Error> {
    let lua = vm.lua();
    let t = lua.create_table()?;
    let bucket = lua.create_function(move |_, (key, rate, burst): (String, f64, f64)| {
        if rate.is_nan() || rate <= 0.0 || burst.is_nan() || burst < 0.0 {
            return Err(mlua::Error::runtime(
                "token_bucket: rate must be > 0 and burst >= 0",
            ));
        }
        Ok(
            match buckets.take(&key, rate, burst, std::time::Instant::now()) {
                Ok(()) => (true, None),
                Err(wait) => (false, Some(wait.as_millis().max(1) as u64)),
            },
        )
    })?;
    t.set("token_bucket", bucket)?;
    // The common case (a permit in hand, or a cached answer) is a plain
    // call; only a trip to Redis goes through the async machinery.
    let now_permits = permits.clone();
    let permit_now =
        lua.create_function(move |_, (round, item, qty): (i64, i64, Option<i64>)| {
            let Some(permits) = &now_permits else {
                return Ok(("off", None));
            };
            let units = units(qty)?;
            Ok(match permits.try_acquire((round, item), units) {
                Some(v) => answer(permits, v),
                None => ("ask", None),
            })
        })?;
    let permit_wait =
        lua.create_async_function(move |_, (round, item, qty): (i64, i64, Option<i64>)| {
            let permits = permits.clone();
            async move {
                let Some(permits) = permits else {
                    return Ok(("off", None));
                };
                let units = units(qty)?;
                let v = permits.acquire((round, item), units).await;
                Ok(answer(&permits, v))
            }
        })?;
    let permit: mlua::Function = lua
        .load(
            "local now, wait = ...
             return function(round, item, qty)
               local v, ms = now(round, item, qty)
               if v ~= 'ask' then return v, ms end
               return wait(round, item, qty)
             end",
        )
        .set_name("=seckill.permit")
        .call((permit_now, permit_wait))?;
    t.set("permit", permit)?;
    lua.globals().set("seckill", t)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_cannot_be_closed_by_content() {
        assert_eq!(long_string("a"), "[[\na]]");
        assert_eq!(long_string("x]]y"), "[=[\nx]]y]=]");
        assert_eq!(long_string("x]"), "[=[\nx]]=]");
    }
}
