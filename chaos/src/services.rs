//! Server instances of the campaign's own: Redis (snapshot-only, append-only
//! or no persistence), a RabbitMQ node and a PostgreSQL cluster, each on
//! free loopback ports with data and logs under the run directory. They
//! can be killed, stopped and restarted on the same data; dropping one
//! kills its process group.
//!
//! Nothing here connects to the machine's shared services.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::Context;
use sea_orm::{ConnectionTrait, Database};
use tokio::time::Instant;

use crate::procs::{self, Proc, Sig};

/// How a Redis instance persists its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// RDB snapshots every second with a change (Debian's kind); a kill
    /// restarts from the last snapshot.
    Rdb,
    /// Append-only file, fsync every second.
    Aof,
    /// Nothing: a restart comes back empty.
    None,
}

/// One redis-server of the campaign's own.
pub struct Redis {
    pub persistence: Persistence,
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Redis {
    pub async fn start(dir: &Path, persistence: Persistence) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut r = Self {
            persistence,
            port: procs::free_port()?,
            dir: dir.to_owned(),
            proc: None,
        };
        r.spawn().await?;
        Ok(r)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
        ])
        .arg("--port")
        .arg(self.port.to_string())
        .arg("--dir")
        .arg(&self.dir)
        .args(["--logfile", "", "--dbfilename", "dump.rdb"]);
        match self.persistence {
            Persistence::Rdb => cmd.args(["--save", "1 1", "--appendonly", "no"]),
            Persistence::Aof => cmd.args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ]),
            Persistence::None => cmd.args(["--save", "", "--appendonly", "no"]),
        };
        let log = self.dir.join("redis.log");
        self.proc = Some(Proc::spawn(
            &format!("redis-{:?}", self.persistence),
            cmd,
            &log,
        )?);
        self.await_ready(Duration::from_secs(20)).await
    }

    /// Waits until the server answers PING (not LOADING).
    async fn await_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(500), self.ping()).await
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "redis on {} not ready within {limit:?}: {}",
                    self.port,
                    self.proc
                        .as_ref()
                        .map(|p| p.log_tail(5))
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn ping(&self) -> anyhow::Result<()> {
        let mut c = self.connection().await?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub async fn connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to redis on {}", self.port))
    }

    pub fn pid(&self) -> i32 {
        self.proc.as_ref().map(Proc::pid).unwrap_or(0)
    }

    /// `kill -9`, and wait until it is gone.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.kill9().await?;
        }
        procs::wait_port_closed(self.addr(), Duration::from_secs(5)).await
    }

    /// Starts again on the same port and directory (loading what it kept).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc = None;
        self.spawn().await
    }

    pub fn signal(&self, sig: Sig) -> anyhow::Result<()> {
        procs::signal(self.pid(), sig)
    }
}

/// A RabbitMQ node of the campaign's own (its own node name, ports,
/// Mnesia and log directories, config file; owned by the `rabbitmq` user).
/// Erlang's port mapper (epmd, port 4369) is the machine's: nodes register
/// their names there, which is harmless.
pub struct Rabbit {
    pub port: u16,
    dir: PathBuf,
    node: String,
    dist_port: u16,
    proc: Option<Proc>,
}

impl Rabbit {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("mnesia"))?;
        std::fs::create_dir_all(dir.join("log"))?;
        let port = procs::free_port()?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
        )?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        procs::chown_to(dir, "rabbitmq")?;
        let mut r = Self {
            port,
            dir: dir.to_owned(),
            node: format!("seckill-chaos-{}@localhost", std::process::id()),
            dist_port: procs::free_port()?,
            proc: None,
        };
        r.spawn().await?;
        Ok(r)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let (uid, gid) = procs::user_ids("rabbitmq")?;
        let d = &self.dir;
        let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        cmd.current_dir(d)
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("rabbit.pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .uid(uid)
            .gid(gid);
        let _ = std::fs::remove_file(d.join("rabbit.pid"));
        let begun = Instant::now();
        self.proc = Some(Proc::spawn("rabbitmq", cmd, &d.join("rabbitmq.out"))?);
        procs::wait_port(self.addr(), Duration::from_secs(90), "rabbitmq")
            .await
            .with_context(|| {
                self.proc
                    .as_ref()
                    .map(|p| p.log_tail(20))
                    .unwrap_or_default()
            })?;
        tracing::info!(
            port = self.port,
            secs = begun.elapsed().as_secs_f64(),
            "rabbitmq up"
        );
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The Erlang VM's pid (from the node's pid file).
    pub fn beam_pid(&self) -> anyhow::Result<i32> {
        let path = self.dir.join("rabbit.pid");
        std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .parse()
            .context("rabbitmq pid file")
    }

    pub fn signal(&self, sig: Sig) -> anyhow::Result<()> {
        procs::signal(self.beam_pid()?, sig)
    }

    /// `kill -9` the VM, wait until it is gone, start again on the same data.
    pub async fn kill9_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await?;
        self.restart().await
    }

    /// `kill -9` the VM and wait until it is gone.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        let pid = self.beam_pid()?;
        procs::signal(pid, Sig::Kill)?;
        procs::wait_gone(pid, Duration::from_secs(10)).await?;
        self.proc = None;
        procs::wait_port_closed(self.addr(), Duration::from_secs(10)).await
    }

    /// Starts the node again on the same data (after [`Self::kill9`]).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.spawn().await
    }

    /// A graceful stop (SIGTERM to the VM), then the group is killed.
    pub async fn stop(mut self) {
        if let Ok(pid) = self.beam_pid() {
            let _ = procs::signal(pid, Sig::Cont);
            let _ = procs::signal(pid, Sig::Term);
            let _ = procs::wait_gone(pid, Duration::from_secs(15)).await;
        }
        self.proc = None;
    }
}

/// A PostgreSQL cluster of the campaign's own (initdb as the `postgres`
/// user, trust authentication, loopback TCP and a socket in its directory).
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    proc: Option<Proc>,
}

/// The newest `/usr/lib/postgresql/<v>/bin` that has `initdb`.
pub fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries (/usr/lib/postgresql) are not installed")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

impl Postgres {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = postgres_bin_dir()?;
        std::fs::create_dir_all(dir)?;
        procs::chown_to(dir, "postgres")?;
        let (uid, gid) = procs::user_ids("postgres")?;
        let out = Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .uid(uid)
            .gid(gid)
            .current_dir(dir)
            .output()
            .context("running initdb")?;
        anyhow::ensure!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Self {
            port: procs::free_port()?,
            dir: dir.to_owned(),
            bin,
            proc: None,
        };
        pg.spawn().await?;
        Ok(pg)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let (uid, gid) = procs::user_ids("postgres")?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
            ])
            .uid(uid)
            .gid(gid)
            .current_dir(&self.dir);
        self.proc = Some(Proc::spawn(
            "postgres",
            cmd,
            &self.dir.join("postgres.log"),
        )?);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.execute("postgres", "SELECT 1").await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).context(format!(
                        "postgres did not come up: {}",
                        self.proc
                            .as_ref()
                            .map(|p| p.log_tail(10))
                            .unwrap_or_default()
                    ));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    async fn execute(&self, db: &str, sql: &str) -> anyhow::Result<()> {
        let mut opts = sea_orm::ConnectOptions::new(self.url(db));
        opts.max_connections(1)
            .connect_timeout(Duration::from_secs(2))
            .sqlx_logging(false);
        let conn = Database::connect(opts).await?;
        conn.execute_unprepared(sql).await?;
        conn.close().await?;
        Ok(())
    }

    /// Creates an empty database.
    pub async fn create_db(&self, name: &str) -> anyhow::Result<()> {
        self.execute("postgres", &format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("creating database {name}"))
    }

    /// `kill -9` the postmaster, wait until its backends noticed and
    /// exited, start again on the same data (crash recovery).
    pub async fn kill9_and_restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.proc.take() {
            let pgid = p.pid();
            p.kill9().await?;
            // A new postmaster refuses to start while backends of the old
            // one still hold its shared memory; idle ones only notice the
            // postmaster's death when their client talks to them. Give them
            // a moment, then stop what is left, as a supervisor restarting
            // the server would have to.
            if procs::wait_gone(-pgid, Duration::from_secs(1))
                .await
                .is_err()
            {
                tracing::info!("stopping backends the killed postmaster left behind");
            }
            drop(p);
            procs::wait_gone(-pgid, Duration::from_secs(5)).await?;
        }
        self.spawn().await
    }
}
