//! Child processes the campaign owns. Each runs in a process group of its
//! own (so a server's helpers go with it) with its output in a log file;
//! dropping a [`Proc`] kills its whole group (SIGCONT first, in case it was
//! stopped) and reaps it, so a failing or interrupted run leaves nothing
//! behind. Also: free loopback ports, waiting for a port, signals by pid.
//!
//! This module never signals a process it did not start: every pid it
//! signals is a child it spawned or a pid one of them wrote into the run
//! directory.

use std::{
    fs::OpenOptions,
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::time::Instant;

/// Signals the campaign sends.
#[derive(Clone, Copy, Debug)]
pub enum Sig {
    Kill,
    Term,
    Stop,
    Cont,
}

impl Sig {
    fn raw(self) -> i32 {
        match self {
            Sig::Kill => libc::SIGKILL,
            Sig::Term => libc::SIGTERM,
            Sig::Stop => libc::SIGSTOP,
            Sig::Cont => libc::SIGCONT,
        }
    }
}

/// Sends `sig` to `pid` (a negative pid names a process group).
pub fn signal(pid: i32, sig: Sig) -> anyhow::Result<()> {
    anyhow::ensure!(pid != 0 && pid != -1, "refusing to signal pid {pid}");
    // SAFETY: kill(2) has no memory effects; pid 0 and -1 (whole session,
    // every process) are refused above.
    let rc = unsafe { libc::kill(pid, sig.raw()) };
    if rc != 0 {
        bail!("kill({pid}, {sig:?}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a process (or with a negative pid, any process of a group) exists.
pub fn exists(pid: i32) -> bool {
    if pid == 0 || pid == -1 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Waits until `pid` (or a group, negative) is gone, within `limit`.
pub async fn wait_gone(pid: i32, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while exists(pid) {
        if Instant::now() >= deadline {
            bail!("process {pid} still exists after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A free port on 127.0.0.1 for a server the campaign starts.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`), so the
/// crowd's own outgoing connections, which use that range by the thousand,
/// cannot take it between this check and the server's bind; and never the
/// same port twice in one campaign.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = if low > 12_000 {
        (10_000, low)
    } else {
        (low, u16::MAX)
    };
    let mut given = GIVEN.lock().expect("port list");
    for _ in 0..1000 {
        let port = fastrand::u16(from..to);
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no free port in {from}..{to} after 1000 tries")
}

/// Waits until something accepts connections on `addr`, within `limit`.
pub async fn wait_port(addr: SocketAddr, limit: Duration, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        if let Ok(Ok(_)) = attempt {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what} did not open {addr} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until nothing accepts connections on `addr` any more.
pub async fn wait_port_closed(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while let Ok(Ok(_)) = tokio::time::timeout(
        Duration::from_millis(200),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        if Instant::now() >= deadline {
            bail!("{addr} still accepts connections after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The uid and gid of a system user (`id -u`, `id -g`).
pub fn user_ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .with_context(|| format!("id {flag} {user}"))?;
        anyhow::ensure!(out.status.success(), "no user {user}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("id {flag} {user}"))
    };
    Ok((id("-u")?, id("-g")?))
}

/// `chown -R user: path`.
pub fn chown_to(path: &Path, user: &str) -> anyhow::Result<()> {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:{user}"))
        .arg(path)
        .status()
        .context("running chown")?;
    anyhow::ensure!(st.success(), "chown -R {user} {} failed", path.display());
    Ok(())
}

/// A child process in a process group of its own.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` in a new process group, stdin closed, stdout and
    /// stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        tracing::debug!(name, pid = child.id(), log = %log.display(), "started");
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's pid (also its process group id).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether the child still runs (reaps it if it exited).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `sig` to the child itself.
    pub fn signal(&self, sig: Sig) -> anyhow::Result<()> {
        signal(self.pid(), sig).with_context(|| format!("signalling {}", self.name))
    }

    /// `kill -9` the child itself (not its group) and reap it.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.signal(Sig::Kill)?;
        self.reap(Duration::from_secs(10)).await
    }

    /// Waits for the child to exit, within `limit`.
    pub async fn reap(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.running() {
            if Instant::now() >= deadline {
                bail!("{} did not exit within {limit:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// SIGTERM, then the whole group SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if self.running() {
            let _ = self.signal(Sig::Cont);
            let _ = self.signal(Sig::Term);
            let _ = self.reap(grace).await;
        }
        // Drop kills what is left of the group.
    }

    /// The last `n` lines of the process's log, backtrace frames left out
    /// so that a panic's message is among them.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !is_frame(l)).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A line of a Rust backtrace (`  12: symbol` or `      at file:line`).
fn is_frame(line: &str) -> bool {
    let t = line.trim_start();
    t.len() < line.len()
        && (t.starts_with("at ")
            || t.split_once(": ")
                .is_some_and(|(n, _)| n.bytes().all(|b| b.is_ascii_digit())))
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = c.id() as i32;
            if exists(-pgid) {
                let _ = signal(-pgid, Sig::Cont);
                let _ = signal(-pgid, Sig::Kill);
            }
            let _ = c.wait();
            tracing::debug!(name = %self.name, "stopped");
        }
    }
}
