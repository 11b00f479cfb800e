//! One process the run started: goldrelay, the sandbox Chatwoot or the bare
//! handler. It is killed when its handle is dropped, so an error, a panic or
//! Ctrl-C leaves nothing running.

use anyhow::{bail, Context};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long a process may take to answer its health check before the run gives up.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How often the health check is tried while a process starts: fine enough to
/// time goldrelay's start against its 200 ms target.
const PROBE_EVERY: Duration = Duration::from_millis(1);

pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    /// `http://127.0.0.1:<port>`
    pub url: String,
    /// From spawn to the first 200 from the health check.
    pub ready_after: Duration,
}

impl Process {
    /// Spawns `command` with nothing inherited from this environment but what
    /// it sets, logs to `log`, and waits until `GET <url><health>` answers 200.
    pub async fn start(
        name: &str,
        mut command: Command,
        url: String,
        health: &str,
        log: PathBuf,
        http: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("could not create {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true);
        let spawned = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("could not start {name}"))?;
        let mut process = Self {
            name: name.to_owned(),
            child,
            log,
            url,
            ready_after: Duration::ZERO,
        };
        process.ready_after = process.wait_ready(health, http, spawned).await?;
        Ok(process)
    }

    async fn wait_ready(
        &mut self,
        health: &str,
        http: &reqwest::Client,
        spawned: Instant,
    ) -> anyhow::Result<Duration> {
        let probe = format!("{}{health}", self.url);
        loop {
            let answer = http.get(&probe).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return Ok(spawned.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}) before it was ready", self.describe());
            }
            if spawned.elapsed() > READY_WITHIN {
                bail!(
                    "{} did not answer {probe} within {READY_WITHIN:?}",
                    self.describe()
                );
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// The name and the last lines of the log, for an error message.
    pub fn describe(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
        format!("{} (log {}):\n  {tail}", self.name, self.log.display())
    }

    /// The most memory the process has held resident so far (`VmHWM`), in KiB.
    /// The process's id, while it runs.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("the process has exited")
    }

    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("the process has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/<pid>/status")
    }

    /// Kills the process (SIGKILL: nothing it holds outlives the run) and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A port that was free a moment ago, for a process told to listen on it.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
