//! goldrelay's benchmark (issue 7). `bench/run` installs wrk, builds the release
//! binaries and runs this; it starts every process it measures, on fresh
//! databases, and prints one table with each figure's ratio to the bare
//! handler measured in the same run.

mod delivery;
mod drain;
mod formats;
mod harness;
mod ingest;
mod memory;
mod plan;
mod process;
mod report;
mod sandbox;
mod slow;
mod stats;
mod support;
mod sustained;
mod wrk;

use anyhow::Context;
use clap::Parser;
use harness::{Database, Harness, Tools};
use ingest::Target;
use plan::{Only, Plan};
use report::{Postgres, Report, SqliteDelivery};
use std::path::PathBuf;
use std::process::ExitCode;

/// Measures goldrelay against the bare handler and prints one table.
#[derive(Parser)]
#[command(about, long_about = None)]
struct Cli {
    /// Seconds of each wrk run (four of them).
    #[arg(long, env = "BENCH_SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Seconds of the sustained SQLite run (64 clients), in windows of up to 30 s.
    #[arg(long, env = "BENCH_SUSTAINED_SECONDS", default_value_t = 180, value_parser = clap::value_parser!(u64).range(2..))]
    sustained_seconds: u64,
    /// Replies in the drain with the send-rate cap lifted.
    #[arg(long, env = "BENCH_DRAIN_REPLIES", default_value_t = 10_000)]
    drain_replies: usize,
    /// Replies in the drain at the default send-rate cap (40/s: 1 000 take ~25 s).
    #[arg(long, env = "BENCH_CAPPED_REPLIES", default_value_t = 1_000)]
    capped_replies: usize,
    /// Slow clients trickling a body at goldrelay at once (issue 12).
    #[arg(long, env = "BENCH_SLOW_CLIENTS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    slow_clients: u64,
    /// Run only these parts, comma-separated, and print their rows (default: all).
    #[arg(long, env = "BENCH_ONLY", value_enum, value_delimiter = ',')]
    only: Vec<Only>,
    /// PostgreSQL to measure goldrelay on as well.
    #[arg(long, env = "TEST_DATABASE_URL", hide_env_values = true)]
    postgres: Option<String>,
    /// The load generator.
    #[arg(long, env = "WRK", default_value = "wrk")]
    wrk: PathBuf,
    /// What goldrelay was built from, for the table's heading (`bench/run` passes `git describe`).
    #[arg(long, env = "BENCH_REVISION", default_value = "unknown revision")]
    revision: String,
    /// Directory holding the release `goldrelay` and `bare` (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tokio::select! {
        result = run(cli) => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("goldrelay-bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        // Dropping `run` kills every process it started.
        () = interrupted() => {
            eprintln!("goldrelay-bench: interrupted; stopped everything it started");
            ExitCode::from(130)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let plan = Plan::new(&cli.only, cli.postgres.is_some())?;
    let bin_dir = match &cli.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .to_owned(),
    };
    let tools = Tools {
        goldrelay: bin_dir.join("goldrelay"),
        bare: bin_dir.join("bare"),
        wrk: cli.wrk.clone(),
    };
    let run_id = format!("b{}", std::process::id());
    if plan.slow {
        // Before anything runs: a limit too low would end the run at its last row.
        slow::check_open_files(usize::try_from(cli.slow_clients)?)?;
    }
    let load_before = report::load_average();
    let mut h = Harness::new(tools, cli.seconds, run_id)?;
    let report = measure(&mut h, &plan, &cli, load_before).await?;
    println!("{report}");
    Ok(())
}

/// Makes the plan's measurements, in the full run's order.
async fn measure(
    h: &mut Harness,
    plan: &Plan,
    cli: &Cli,
    load_before: String,
) -> anyhow::Result<Report> {
    let bare = maybe(plan.bare, ingest::measure(h, Target::Bare)).await?;
    let sqlite = Target::Relay(&Database::Sqlite);
    let relay = maybe(plan.sqlite, ingest::measure(h, sqlite)).await?;
    let sustained = maybe(plan.sustained, sustained::measure(h, cli.sustained_seconds)).await?;
    let delivery = maybe(plan.drain, sqlite_delivery(h, cli)).await?;
    let slow_clients = usize::try_from(cli.slow_clients)?;
    let slow = maybe(plan.slow, slow::measure(h, slow_clients)).await?;
    let memory = maybe(plan.memory, memory::measure(h)).await?;
    let formats = maybe(plan.formats, formats::measure(h)).await?;
    let postgres = match (plan.postgres, &cli.postgres) {
        (false, _) => None,
        (true, None) => Some(Postgres::NotAsked),
        (true, Some(url)) => Some(postgres(h, url, cli.drain_replies).await),
    };
    Ok(Report {
        revision: cli.revision.clone(),
        load: [load_before, report::load_average()],
        seconds: h.seconds,
        bare,
        relay,
        sustained,
        delivery,
        slow,
        memory,
        formats,
        postgres,
        starts: h.starts.clone(),
        relay_bytes: file_size(&h.tools.goldrelay)?,
        bare_bytes: file_size(&h.tools.bare)?,
    })
}

/// `measurement`'s result if the plan has it, without starting it otherwise.
async fn maybe<T>(
    planned: bool,
    measurement: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Option<T>> {
    if !planned {
        return Ok(None);
    }
    measurement.await.map(Some)
}

/// Delivery latency, then the drain with the cap lifted and at the default cap.
async fn sqlite_delivery(h: &mut Harness, cli: &Cli) -> anyhow::Result<SqliteDelivery> {
    let latency = delivery::measure(h).await?;
    let unlimited = drain::measure(h, cli.drain_replies, 0, &Database::Sqlite).await?;
    let capped = drain::measure(
        h,
        cli.capped_replies,
        drain::DEFAULT_SEND_RATE,
        &Database::Sqlite,
    )
    .await?;
    Ok(SqliteDelivery {
        latency,
        unlimited,
        capped,
    })
}

/// Ingest and drain again on PostgreSQL, if goldrelay starts on it.
async fn postgres(h: &mut Harness, server: &str, drain_replies: usize) -> Postgres {
    let database = Database::Postgres(server.to_owned());
    let measured = async {
        let ingest = ingest::measure(h, Target::Relay(&database)).await?;
        let drain = drain::measure(h, drain_replies, 0, &database).await?;
        anyhow::Ok((ingest, drain))
    };
    let measured = measured.await;
    h.drop_databases().await;
    match measured {
        Ok((ingest, drain)) => Postgres::Measured(Box::new(ingest), Box::new(drain)),
        Err(e) => Postgres::Failed(format!("{e:#}")),
    }
}

fn file_size(path: &std::path::Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{} is missing: build it first", path.display()))?
        .len())
}

/// Completes on Ctrl-C or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
