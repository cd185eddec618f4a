//! The Lua access and log phases: the operator's scripts on nginx-compat,
//! one Lua VM per worker thread, hot-reloaded when the files change.
//!
//! The access file (`lua.access`) is the access chunk, `lua.log` (if set)
//! the log chunk; every other `*.lua` file in the access file's directory
//! becomes the module `edge.<name>` (so `require "edge.limits"` reads
//! `limits.lua`), and every `*.lua` file under `lua.lib_dirs`
//! (recursively, hidden entries skipped) the module its path names
//! (`resty/limit/conn.lua` → `resty.limit.conn`, `x/init.lua` → `x`; the
//! first directory wins, as with `package.path`). The edge reads all of
//! them itself, watches all of them, and hands the text to each VM, so all
//! VMs of one generation run the same text whatever changes on disk.
//!
//! Files are accepted only after a trial: compiled, `init` and `edge.check`
//! (if present) run, then the access chunk (and the log chunk) run on
//! synthetic requests ([`TRIAL_REQUESTS`]) in a VM of their own, with
//! scratch shared dicts and token buckets and a `seckill.permit` that
//! answers `"off"`, so a trial touches no live state and no Redis. Any
//! failure (unreadable file, compile error, a Lua error in the trial)
//! refuses the files at start, in `check-config`, and on reload; on reload
//! it is logged with the reason, counted in `edge_lua_reloads_total`, and
//! the previous generation keeps serving. Connections are never dropped:
//! threads switch to the new VMs on their next request; shared dicts
//! (limiter state) carry over.
//!
//! Host functions (the `seckill` table: `permit`, `token_bucket`) are added
//! to each VM here. The permit taken by `seckill.permit` is recorded for
//! the proxy through a task-local slot, so a script cannot lose it.

use std::{
    cell::RefCell,
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use nginx_compat::{
    AccessOutcome, Engine, LuaVm, Module, Request, RequestCtx, Scripts, SharedDicts, SystemClock,
};

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
    #[error("trial request {request}: {error}")]
    Trial {
        request: &'static str,
        error: String,
    },
}

impl AccessError {
    /// The `reason` label of a refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            AccessError::Read { .. } => "unreadable",
            AccessError::Lua(_) | AccessError::Host(_) => "load",
            AccessError::Trial { .. } => "trial",
        }
    }
}

/// The synthetic requests every new set of files must get through without
/// a Lua error: a buy by a verified user with a JSON body, and an
/// anonymous API read.
pub const TRIAL_REQUESTS: [(&str, &str, &str); 2] = [
    ("POST", "/api/rounds/1/items/1/buy", "trial-user"),
    ("GET", "/api/x", ""),
];

/// How long one trial request may take (`ngx.sleep` included).
const TRIAL_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// What the log phase needs, when a log chunk is configured.
    pub log: Option<LogPhase>,
}

/// A request's Lua state kept from the access phase for the log phase: the
/// VM it ran on (the `ngx.ctx` table lives there) and the request.
pub struct LogPhase {
    vm: Arc<LuaVm>,
    ctx: RequestCtx,
}

impl std::fmt::Debug for LogPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogPhase").finish_non_exhaustive()
    }
}

tokio::task_local! {
    static PERMIT_SLOT: Arc<Mutex<Vec<Permit>>>;
}

thread_local! {
    static VM: RefCell<Option<(u64, Arc<LuaVm>)>> = const { RefCell::new(None) };
}

/// Process-wide so VMs of two instances in one process never mix.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// One Lua file as read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceFile {
    path: PathBuf,
    text: Arc<str>,
}

/// Every file the policy loads, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sources {
    access: SourceFile,
    log: Option<SourceFile>,
    /// Modules by name: the access directory's `edge.*` first, then the
    /// lib dirs' (a name is taken by its first file).
    modules: Vec<(String, SourceFile)>,
}

/// What the watcher saw last.
#[derive(Default)]
struct Seen {
    sources: Option<Sources>,
    /// The read error last reported, so a lasting one is logged once.
    failed: Option<String>,
}

/// The node's Lua configuration and its current generation.
pub struct LuaAccess {
    cfg: LuaConfig,
    engine: RwLock<Engine>,
    generation: AtomicU64,
    permits: Option<Permits>,
    buckets: Arc<TokenBuckets>,
    metrics: Metrics,
    seen: Mutex<Seen>,
}

impl LuaAccess {
    /// Loads the Lua files and runs the trial; fails if either fails.
    pub fn new(
        cfg: &LuaConfig,
        permits: Option<Permits>,
        metrics: Metrics,
    ) -> Result<Self, AccessError> {
        let sources = read_sources(cfg)?;
        let scripts = scripts_of(cfg, &sources);
        trial(cfg, &scripts)?;
        let dicts = SharedDicts::new(
            cfg.dicts.iter().map(|(n, s)| (n.as_str(), *s)),
            Arc::new(SystemClock),
        )?;
        let engine = Engine::new(scripts, dicts, Arc::new(SystemClock))?;
        let me = Self {
            cfg: cfg.clone(),
            engine: RwLock::new(engine.clone()),
            generation: AtomicU64::new(GENERATIONS.fetch_add(1, Ordering::Relaxed)),
            permits,
            buckets: Arc::default(),
            metrics,
            seen: Mutex::new(Seen {
                sources: Some(sources),
                failed: None,
            }),
        };
        // A VM must build (init_worker runs) before we serve with it.
        me.build_vm(&engine)?;
        Ok(me)
    }

    /// Validates the Lua files, trial included, without keeping anything
    /// (`check-config`).
    pub fn check(cfg: &LuaConfig) -> Result<(), AccessError> {
        let sources = read_sources(cfg)?;
        trial(cfg, &scripts_of(cfg, &sources))
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
                self.metrics.lua_error("access");
                return Decision {
                    outcome: AccessOutcome::Respond {
                        status: 500,
                        headers: Vec::new(),
                        body: Vec::new(),
                    },
                    permits: Vec::new(),
                    reason: Some("lua_error".into()),
                    error: Some(e.to_string()),
                    log: None,
                };
            }
        };
        let slot = Arc::new(Mutex::new(Vec::new()));
        let access = PERMIT_SLOT.scope(slot.clone(), vm.run_access(req)).await;
        let permits = std::mem::take(&mut *slot.lock().expect("slot lock"));
        let reason = access.ctx.request().vars.get("seckill_reason").cloned();
        if access.error.is_some() {
            self.metrics.lua_error("access");
        }
        let log = vm.has_log().then(|| LogPhase {
            vm: vm.clone(),
            ctx: access.ctx,
        });
        Decision {
            outcome: access.outcome,
            permits,
            reason,
            error: access.error.map(|e| e.to_string()),
            log,
        }
    }

    /// Runs the log chunk after the response (`status`, `request_time`
    /// seconds after the request arrived), on the VM the access phase ran
    /// on. A Lua error is logged and counted; nothing else changes.
    pub async fn run_log(&self, log: LogPhase, status: u16, request_time: f64) {
        if let Err(e) = log.vm.run_log(log.ctx, status, request_time).await {
            self.metrics.lua_error("log");
            tracing::error!(error = %e, status, "log phase failed");
        }
    }

    /// Reloads the Lua files if they changed on disk. Returns `Some(Ok)`
    /// when a new generation serves, `Some(Err)` when the files were
    /// refused, `None` when nothing changed (or a read error was already
    /// reported).
    pub fn reload_if_changed(&self) -> Option<Result<(), AccessError>> {
        let sources = match read_sources(&self.cfg) {
            Ok(s) => s,
            Err(e) => {
                let msg = e.to_string();
                let mut seen = self.seen.lock().expect("seen lock");
                if seen.failed.as_deref() == Some(msg.as_str()) {
                    return None;
                }
                seen.failed = Some(msg);
                // Read again once the file is back, even if unchanged.
                seen.sources = None;
                drop(seen);
                self.refused(&e);
                return Some(Err(e));
            }
        };
        {
            let mut seen = self.seen.lock().expect("seen lock");
            seen.failed = None;
            if seen.sources.as_ref() == Some(&sources) {
                return None;
            }
            seen.sources = Some(sources.clone());
        }
        let result = (|| {
            let scripts = scripts_of(&self.cfg, &sources);
            trial(&self.cfg, &scripts)?;
            let current = self.engine.read().expect("engine lock").clone();
            let engine = current.reload(scripts)?;
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
                self.metrics.reload("ok", "");
                tracing::info!(access = %self.cfg.access.display(), "lua files reloaded");
            }
            Err(e) => self.refused(e),
        }
        Some(result)
    }

    fn refused(&self, e: &AccessError) {
        self.metrics.reload("refused", e.reason());
        tracing::error!(
            access = %self.cfg.access.display(),
            reason = e.reason(),
            error = %e,
            "lua files refused; the previous version keeps serving"
        );
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
            // File reads, Lua compilation and the trial stay off the async
            // workers.
            let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
        }
    }
}

/// Runs `scripts` on the trial requests in a node of their own: scratch
/// dicts and buckets, no permits. On a thread of its own, so it works from
/// inside or outside a runtime.
fn trial(cfg: &LuaConfig, scripts: &Scripts) -> Result<(), AccessError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let clock = Arc::new(SystemClock);
            let dicts = SharedDicts::new(
                cfg.dicts.iter().map(|(n, s)| (n.as_str(), *s)),
                clock.clone(),
            )?;
            let engine = Engine::new(scripts.clone(), dicts, clock)?;
            let vm = engine.new_vm()?;
            install_host_api(&vm, None, Arc::default())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| AccessError::Trial {
                    request: "setup",
                    error: e.to_string(),
                })?;
            for (method, path, user) in TRIAL_REQUESTS {
                let name = if method == "POST" { "buy" } else { "api" };
                let fail = |error: String| AccessError::Trial {
                    request: name,
                    error,
                };
                let mut req = Request::new(method, path)
                    .header("Host", "localhost")
                    .var("user_id", user)
                    .var("user_role", if user.is_empty() { "" } else { "buyer" });
                if method == "POST" {
                    req = req
                        .header("Content-Type", "application/json")
                        .with_body(Bytes::from_static(b"{\"qty\":1}"));
                }
                rt.block_on(async {
                    let access = tokio::time::timeout(TRIAL_TIMEOUT, vm.run_access(req))
                        .await
                        .map_err(|_| fail(format!("access did not finish in {TRIAL_TIMEOUT:?}")))?;
                    if let Some(e) = access.error {
                        return Err(fail(e.to_string()));
                    }
                    let status = match access.outcome {
                        AccessOutcome::Respond { status, .. } => status,
                        AccessOutcome::Continue { .. } => 200,
                    };
                    tokio::time::timeout(TRIAL_TIMEOUT, vm.run_log(access.ctx, status, 0.001))
                        .await
                        .map_err(|_| fail(format!("log did not finish in {TRIAL_TIMEOUT:?}")))?
                        .map_err(|e| fail(e.to_string()))
                })?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(AccessError::Trial {
                request: "setup",
                error: "the trial panicked".into(),
            })
        })
    })
}

fn read_file(path: &Path) -> Result<SourceFile, AccessError> {
    let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(SourceFile {
        path: path.to_path_buf(),
        text: text.into(),
    })
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, AccessError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| AccessError::Read {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    entries.sort();
    Ok(entries)
}

fn is_lua(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "lua") && p.is_file()
}

/// Every `*.lua` file under `dir` (depth-limited against symlink loops),
/// with its module name relative to `dir`.
fn lib_modules(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), AccessError> {
    for p in read_dir_sorted(dir)? {
        if p.is_dir() {
            if depth < 16 {
                lib_modules(root, &p, depth + 1, out)?;
            }
        } else if is_lua(&p) {
            let rel = p.strip_prefix(root).unwrap_or(&p).with_extension("");
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push((parts.join("."), p));
        }
    }
    Ok(())
}

/// The access file, the log file, the access directory's other `*.lua`
/// files, then every `*.lua` file under the lib dirs.
fn read_sources(cfg: &LuaConfig) -> Result<Sources, AccessError> {
    let access = read_file(&cfg.access)?;
    let log = cfg.log.as_deref().map(read_file).transpose()?;
    let dir = match cfg.access.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut modules = Vec::new();
    let mut taken = HashSet::new();
    for p in read_dir_sorted(dir)? {
        let own = p.file_name() == cfg.access.file_name()
            || cfg.log.as_deref().is_some_and(|l| same_file(l, &p));
        if !is_lua(&p) || own {
            continue;
        }
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("x");
        let name = format!("edge.{stem}");
        taken.insert(name.clone());
        modules.push((name, read_file(&p)?));
    }
    for root in &cfg.lib_dirs {
        let mut found = Vec::new();
        lib_modules(root, root, 0, &mut found)?;
        // As package.path: `dir/x.lua` before `dir/x/init.lua`, then the
        // next directory.
        let (plain, inits): (Vec<_>, Vec<_>) =
            found.into_iter().partition(|(n, _)| !n.ends_with(".init"));
        let inits = inits
            .into_iter()
            .filter_map(|(n, p)| n.strip_suffix(".init").map(|n| (n.to_owned(), p)));
        for (name, path) in plain.into_iter().chain(inits) {
            if taken.insert(name.clone()) {
                modules.push((name, read_file(&path)?));
            }
        }
    }
    Ok(Sources {
        access,
        log,
        modules,
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn scripts_of(cfg: &LuaConfig, sources: &Sources) -> Scripts {
    let has_check = sources.modules.iter().any(|(n, _)| n == "edge.check");
    Scripts {
        init: has_check.then(|| "require \"edge.check\"".to_owned()),
        init_worker: None,
        access: sources.access.text.to_string(),
        log: sources.log.as_ref().map(|l| l.text.to_string()),
        lua_dirs: cfg.lib_dirs.clone(),
        modules: sources
            .modules
            .iter()
            .map(|(name, f)| Module {
                name: name.clone(),
                source: f.text.clone(),
                chunk_name: format!("@{}", f.path.display()),
            })
            .collect(),
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
        Verdict::Gone => ("gone", None),
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
    let network = lua.create_function(|_, (addr, v4, v6): (String, u8, u8)| {
        Ok(crate::identity::network_of(&addr, v4, v6))
    })?;
    t.set("network", network)?;
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

    fn names(cfg: &LuaConfig) -> Vec<(String, String)> {
        read_sources(cfg)
            .expect("readable")
            .modules
            .into_iter()
            .map(|(n, f)| (n, f.text.to_string()))
            .collect()
    }

    #[test]
    fn modules_are_named_as_package_path_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("edge/access.lua", "return");
        write("edge/limits.lua", "edge dir");
        write("edge/log.lua", "log chunk");
        write("lib1/edge/limits.lua", "lib copy");
        write("lib1/a/b.lua", "a.b from lib1");
        write("lib1/x/init.lua", "x from lib1 init");
        write("lib1/.hidden/y.lua", "hidden");
        write("lib1/notes.txt", "not lua");
        write("lib2/a/b.lua", "a.b from lib2");
        write("lib2/x.lua", "x from lib2");
        write("lib2/z/init.lua", "z from lib2");
        let cfg = LuaConfig {
            access: dir.path().join("edge/access.lua"),
            log: Some(dir.path().join("edge/log.lua")),
            lib_dirs: vec![dir.path().join("lib1"), dir.path().join("lib2")],
            ..LuaConfig::default()
        };
        let got = names(&cfg);
        let want = [
            ("edge.limits", "edge dir"),
            ("a.b", "a.b from lib1"),
            ("x", "x from lib1 init"),
            ("z", "z from lib2"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        assert_eq!(got, want);

        // A missing lib dir is unreadable.
        let mut missing = cfg.clone();
        missing.lib_dirs.push(dir.path().join("nope"));
        let e = read_sources(&missing).unwrap_err();
        assert_eq!(e.reason(), "unreadable");
    }
}
