//! What every measurement shares: the binaries, a scratch directory, an HTTP
//! client, and the way each process is started.

use crate::process::{free_port, Process};
use crate::support::Support;
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;
use tokio::process::Command;

/// The Support token goldrelay and the bare handler accept.
pub const TOKEN: &str = "bench-support-token-0123456789abcdefghij";
/// The Chatwoot token the sandbox accepts and goldrelay sends.
const CHATWOOT_TOKEN: &str = "bench-chatwoot-token";

/// Where the binaries and the load generator are.
pub struct Tools {
    pub goldrelay: PathBuf,
    pub bare: PathBuf,
    pub wrk: PathBuf,
}

/// Where goldrelay keeps its replies in a measurement: always a new database.
#[derive(Debug, Clone)]
pub enum Database {
    /// A new SQLite file in the scratch directory, which is on the temporary
    /// directory's disk (set TMPDIR to measure another).
    Sqlite,
    /// A new database on the PostgreSQL server this URL reaches, made with `psql`.
    Postgres(String),
}

/// How one goldrelay is set up; everything not named keeps its default.
/// A goldrelay, the sandbox it delivers to, and where it stores.
pub struct Pair {
    pub relay: Process,
    pub sandbox: Process,
    pub database_url: String,
}

pub struct RelaySetup {
    pub database_url: String,
    pub chatwoot_url: String,
    /// `GOLDRELAY_SEND_RATE`; `None` keeps the default.
    pub send_rate: Option<u32>,
}

/// From spawn to the first `/hc` 200, for every start, each on a new database.
#[derive(Debug, Clone, Default)]
pub struct Starts {
    pub sqlite: Vec<Duration>,
    pub postgres: Vec<Duration>,
    pub bare: Vec<Duration>,
}

pub struct Harness {
    pub tools: Tools,
    pub http: reqwest::Client,
    /// Length of each load-generator run.
    pub seconds: u64,
    /// Unique to this run, so reply ids never repeat, even in a shared database.
    pub run_id: String,
    /// wrk's script, written into the scratch directory.
    pub script: PathBuf,
    work: TempDir,
    started: u32,
    /// Start to first `/hc` 200 of every process measured.
    pub starts: Starts,
    /// PostgreSQL databases made for this run, as (server URL, name), dropped at its end.
    made: Vec<(String, String)>,
}

impl Harness {
    pub fn new(tools: Tools, seconds: u64, run_id: String) -> anyhow::Result<Self> {
        let work = tempfile::Builder::new()
            .prefix("goldrelay-bench-")
            .tempdir()
            .context("could not create a scratch directory")?;
        let script = work.path().join("post.lua");
        std::fs::write(&script, include_str!("../post.lua"))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            tools,
            http,
            seconds,
            run_id,
            script,
            work,
            started: 0,
            starts: Starts::default(),
            made: Vec::new(),
        })
    }

    /// The URL of a database nobody has used yet.
    pub async fn fresh_database(&mut self, database: &Database) -> anyhow::Result<String> {
        self.started += 1;
        let Database::Postgres(server) = database else {
            let path = self
                .work
                .path()
                .join(format!("goldrelay-{}.db", self.started));
            return Ok(format!("sqlite://{}", path.display()));
        };
        let name = format!("goldrelay_bench_{}_{}", self.run_id, self.started);
        psql(server, &format!("CREATE DATABASE {name}")).await?;
        self.made.push((server.clone(), name.clone()));
        let mut url = reqwest::Url::parse(server).context("TEST_DATABASE_URL is not a URL")?;
        url.set_path(&format!("/{name}"));
        Ok(url.to_string())
    }

    /// Drops the PostgreSQL databases this run made; the SQLite files go with
    /// the scratch directory.
    pub async fn drop_databases(&mut self) {
        for (server, name) in std::mem::take(&mut self.made) {
            if let Err(e) = psql(&server, &format!("DROP DATABASE IF EXISTS {name}")).await {
                eprintln!("   could not drop {name}: {e:#}");
            }
        }
    }

    fn log(&mut self, name: &str) -> PathBuf {
        self.started += 1;
        self.work
            .path()
            .join(format!("{}-{name}.log", self.started))
    }

    pub async fn sandbox(&mut self, port: u16) -> anyhow::Result<Process> {
        let mut command = Command::new(&self.tools.goldrelay);
        command
            .env_clear()
            .args(["sandbox", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--token", CHATWOOT_TOKEN]);
        let url = format!("http://127.0.0.1:{port}");
        let log = self.log("sandbox");
        Process::start(
            "the sandbox Chatwoot",
            command,
            url,
            "/health",
            log,
            &self.http,
        )
        .await
    }

    /// A sandbox Chatwoot, and a goldrelay on a fresh `database` that sends
    /// to it with no rate cap, `env` on top of its defaults.
    pub async fn relay_and_sandbox(
        &mut self,
        database: &Database,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Pair> {
        let sandbox = self.sandbox(free_port()?).await?;
        let database_url = self.fresh_database(database).await?;
        let setup = RelaySetup {
            database_url: database_url.clone(),
            chatwoot_url: sandbox.url.clone(),
            send_rate: None,
        };
        let relay = self.relay_with(&setup, env).await?;
        Ok(Pair {
            relay,
            sandbox,
            database_url,
        })
    }

    pub async fn relay(&mut self, setup: &RelaySetup) -> anyhow::Result<Process> {
        self.relay_with(setup, &[]).await
    }

    /// A goldrelay as [`Harness::relay`] starts it, with these variables set as well.
    pub async fn relay_with(
        &mut self,
        setup: &RelaySetup,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Process> {
        let port = free_port()?;
        let mut command = Command::new(&self.tools.goldrelay);
        command
            .env_clear()
            .arg("serve")
            .env("GOLDRELAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("GOLDRELAY_TOKENS", TOKEN)
            .env("DATABASE_URL", &setup.database_url)
            .env("CHATWOOT_BASE_URL", &setup.chatwoot_url)
            .env("CHATWOOT_API_TOKEN", CHATWOOT_TOKEN)
            // As fly.toml runs it: one JSON line per request, to a file here.
            .env("GOLDRELAY_LOG_FORMAT", "json");
        if let Some(rate) = setup.send_rate {
            command.env("GOLDRELAY_SEND_RATE", rate.to_string());
        }
        command.envs(env.iter().copied());
        let url = format!("http://127.0.0.1:{port}");
        let log = self.log("goldrelay");
        let relay = Process::start("goldrelay", command, url, "/hc", log, &self.http).await?;
        let starts = if setup.database_url.starts_with("sqlite:") {
            &mut self.starts.sqlite
        } else {
            &mut self.starts.postgres
        };
        starts.push(relay.ready_after);
        Ok(relay)
    }

    pub async fn bare(&mut self) -> anyhow::Result<Process> {
        let port = free_port()?;
        let mut command = Command::new(&self.tools.bare);
        command
            .env_clear()
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--token", TOKEN]);
        let url = format!("http://127.0.0.1:{port}");
        let log = self.log("bare");
        let bare = Process::start("the bare handler", command, url, "/hc", log, &self.http).await?;
        self.starts.bare.push(bare.ready_after);
        Ok(bare)
    }

    /// Support's client for the goldrelay (or bare handler) at `url`.
    pub fn support(&self, url: &str) -> Support {
        Support::new(self.http.clone(), url, TOKEN)
    }
}

/// Runs one statement on the PostgreSQL server at `server`.
async fn psql(server: &str, statement: &str) -> anyhow::Result<()> {
    let output = Command::new("psql")
        .args([server, "-v", "ON_ERROR_STOP=1", "-qc", statement])
        .output()
        .await
        .context("could not run psql (Debian: apt-get install postgresql-client)")?;
    if !output.status.success() {
        anyhow::bail!(
            "psql {statement:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
