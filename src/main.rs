use anyhow::Context;
use clap::{Parser, Subcommand};
use goldrelay::config::Settings;
use goldrelay::dev::{self, DevOptions};
use goldrelay::domain::{ReplyId, Status};
use goldrelay::ops;
use goldrelay::sandbox::{self, SandboxConfig};
use goldrelay::startup::{shutdown_signal, Application};
use goldrelay::store::{backup, ReplyFilter};
use goldrelay::telemetry::{self, LogFormat};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// goldrelay takes gold replies (Support's approved, edited or rejected AI drafts),
/// stores every one durably, and delivers the approved ones to Chatwoot exactly
/// once, in order per conversation.
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = EXIT_CODES)]
struct Cli {
    /// Log format: `text` for people, `json` for log shippers.
    #[arg(
        long,
        global = true,
        env = "GOLDRELAY_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 done; 1 a problem, named on standard error (check-config: \
one line per check on standard output); 2 a command line it cannot parse.\n\
Each command's --help says what it reads; serve --help lists every environment variable.";

const CHECK_CONFIG_EXAMPLES: &str = "It reads the environment serve reads (serve --help), and \
GOLDRELAY_PUBLIC_URL for the webhook pitfalls. The database is only read: it says whether the \
schema is missing, behind this build (the deploy's release_command applies it), current, or \
newer (a failure). Chatwoot: GET /health, one authenticated read of --conversation-id (a 404 \
passes: the token works, the conversation may not exist), then the pitfall checks' GET /api \
(its version) and GET /api/v1/profile (the token in each header). Nothing is written to Chatwoot.\n\n\
Examples:\n  \
goldrelay check-config\n  \
fly ssh console --user goldrelay -C \"goldrelay check-config --account-id 1 --conversation-id 42\"";

#[derive(Subcommand)]
enum Command {
    /// Run the service. Configuration comes from the environment (`serve --help`
    /// lists it). Exits at once, naming the variable, when one is missing or invalid.
    #[command(after_long_help = goldrelay::config::reference::help())]
    Serve,
    /// Apply the database migrations (DATABASE_URL) and exit. Fly's release_command runs this.
    Migrate,
    /// Inspect and repair gold replies in the configured database (DATABASE_URL).
    #[command(subcommand)]
    Replies(RepliesCommand),
    /// Check the environment, the database and Chatwoot (its /health and one
    /// authenticated read) before a deploy. Prints one line per check; exits 1 on any problem.
    /// `WARN` lines name deploy pitfalls (docs/deploy.md) and do not fail it.
    #[command(after_long_help = CHECK_CONFIG_EXAMPLES)]
    CheckConfig {
        /// The Chatwoot account to read through the API token.
        #[arg(long, default_value_t = 1)]
        account_id: i64,
        /// A conversation in that account to read.
        #[arg(long, default_value_t = 1)]
        conversation_id: i64,
    },
    /// Run everything locally: SQLite in --data-dir, a generated Support token, and an
    /// embedded sandbox Chatwoot, with a ready-to-paste curl command.
    Dev {
        /// Address goldrelay listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Support token to accept (at least 32 characters); generated when absent.
        #[arg(long, env = "GOLDRELAY_DEV_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Where the dev database lives.
        #[arg(long, default_value = ".goldrelay")]
        data_dir: PathBuf,
        /// Address of the embedded sandbox Chatwoot (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        sandbox_listen: SocketAddr,
    },
    /// Copy the SQLite database (DATABASE_URL) to FILE; safe while `serve` runs.
    ///
    /// Safe while serving: SQLite's online backup copies the database as it
    /// stood when the backup began, while `serve` keeps taking replies
    /// (replies accepted after that are in the next backup; under a heavy
    /// burst its writer may wait for the copy, see docs/deploy.md). The copy is
    /// written next to FILE and renamed to FILE only once complete and synced,
    /// so FILE is never half-written. FILE is one self-contained SQLite file
    /// (no -wal beside it): copy it off the machine. A long copy reports its
    /// progress on standard error. For PostgreSQL, use pg_dump or your
    /// provider's backups instead.
    Backup {
        /// Where to write the backup (its folder must exist).
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Put a backup in place of the SQLite database (DATABASE_URL). Stop `serve` first.
    ///
    /// Checks FILE before touching anything: it must open as SQLite, pass
    /// `PRAGMA integrity_check`, hold goldrelay's tables, and have no migration
    /// this goldrelay does not know. Refuses while any process has the database
    /// open (a running `serve` holds a lock on it; restore needs it alone).
    /// The database it replaces is never deleted: its WAL is folded into it
    /// and it is renamed to `<database>.before-restore-<UTC time>`, in the same
    /// folder. The next `serve` migrates the restored database if it is older.
    Restore {
        /// The backup to restore (a file `goldrelay backup` wrote).
        file: PathBuf,
    },
    /// Run only the sandbox Chatwoot, as a peer for tests, smoke runs and benchmarks.
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// The user token it accepts (may create and list messages).
        #[arg(long, default_value = "sandbox-user-token")]
        token: String,
        /// Sends signed message_created/message_updated events here.
        #[arg(long)]
        webhook_url: Option<String>,
        /// Secret for signing webhook events (unsigned without one).
        #[arg(long, env = "SANDBOX_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: Option<String>,
    },
}

#[derive(Subcommand)]
enum RepliesCommand {
    /// List replies, newest first.
    List {
        /// Only replies in this status: recorded, queued, delivered, confirmed or dead.
        #[arg(long, value_parser = ops::parse_status)]
        status: Option<Status>,
        /// Only replies to this conversation.
        #[arg(long)]
        conversation_id: Option<i64>,
        /// Only replies to this account.
        #[arg(long)]
        account_id: Option<i64>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Print one reply's full status record as JSON.
    Show {
        /// The reply's reply_id.
        #[arg(value_parser = ops::reply_id_arg)]
        reply_id: ReplyId,
    },
    /// Put a dead reply back in the queue with a fresh attempt budget. If an
    /// earlier attempt may have created the message, the conversation is looked
    /// up first and the reply is sent only if its message is not there.
    Retry {
        /// The reply's reply_id.
        #[arg(value_parser = ops::reply_id_arg)]
        reply_id: ReplyId,
        /// Send without looking in the conversation first, even when an
        /// earlier attempt may have created the message (risks a duplicate:
        /// check the conversation before you force).
        #[arg(long)]
        force: bool,
    },
    /// Write every decision (the gold dataset) as JSON Lines, oldest first; each
    /// line's `cursor` resumes the export right after it. Replies of the last
    /// minute are left for the next export, so none can slip behind a cursor.
    Export {
        /// Resume after this cursor (the last line's `cursor`); from the start without it.
        #[arg(long)]
        since: Option<String>,
        /// Write here instead of standard output (appended to, so a resumed export continues it).
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        dataset: ops::DatasetArgs,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let traces = telemetry::init(cli.log_format);
    let ran = run(cli.command).await;
    // After the worker drained, so the last attempts' spans are sent too.
    traces.shutdown().await;
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("goldrelay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve().await,
        Command::Migrate => {
            let url = Settings::database_url_from_env()?;
            goldrelay::store::open(&url).await?;
            println!("migrations applied to {url}");
            Ok(())
        }
        Command::Replies(command) => replies(command).await,
        Command::Backup { file, force } => {
            let url = Settings::database_url_from_env()?;
            println!("{}", backup::backup(&url, &file, force)?);
            Ok(())
        }
        Command::Restore { file } => {
            let url = Settings::database_url_from_env()?;
            println!("{}", backup::restore(&url, &file)?);
            Ok(())
        }
        Command::CheckConfig {
            account_id,
            conversation_id,
        } => check_config(account_id, conversation_id).await,
        Command::Dev {
            listen,
            token,
            data_dir,
            sandbox_listen,
        } => {
            dev::run(DevOptions {
                listen,
                token,
                data_dir,
                sandbox_listen,
            })
            .await
        }
        Command::Sandbox {
            listen,
            token,
            webhook_url,
            webhook_secret,
        } => {
            let config = SandboxConfig {
                user_token: token,
                webhook_url,
                webhook_secret,
                ..SandboxConfig::default()
            };
            run_sandbox(config, listen).await
        }
    }
}

/// `serve`: the service, until a shutdown signal.
async fn serve() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let app = Application::build(settings).await?;
    tracing::info!(addr = %app.addr(), version = env!("CARGO_PKG_VERSION"), "goldrelay listening");
    app.run_until(shutdown_signal()).await
}

/// `check-config`: one line per check; fails only when a check failed.
async fn check_config(account_id: i64, conversation_id: i64) -> anyhow::Result<()> {
    let checks =
        ops::check_config(|name| std::env::var(name).ok(), account_id, conversation_id).await;
    for check in &checks {
        println!("{} {}", check.level.label(), check.line);
    }
    // A warning is a pitfall to read, not a reason to stop a deploy.
    let failed = checks
        .iter()
        .filter(|c| c.level == ops::Level::Fail)
        .count();
    anyhow::ensure!(failed == 0, "{failed} check(s) failed");
    Ok(())
}

/// `sandbox`: the sandbox Chatwoot, until a shutdown signal.
async fn run_sandbox(config: SandboxConfig, listen: SocketAddr) -> anyhow::Result<()> {
    let handle = sandbox::start(config, listen)?;
    println!("sandbox Chatwoot listening on {}", handle.base_url());
    shutdown_signal().await;
    handle.stop().await;
    Ok(())
}

async fn replies(command: RepliesCommand) -> anyhow::Result<()> {
    let store = ops::open_store().await?;
    match command {
        RepliesCommand::List {
            status,
            conversation_id,
            account_id,
            limit,
        } => {
            let filter = ReplyFilter {
                status,
                account_id,
                conversation_id,
                after: None,
                limit,
            };
            print!("{}", ops::list(&store, filter).await?);
        }
        RepliesCommand::Show { reply_id } => print!("{}", ops::show(&store, &reply_id).await?),
        RepliesCommand::Export {
            since,
            output,
            dataset,
        } => export(store, since, output, dataset.options()?).await?,
        RepliesCommand::Retry { reply_id, force } => {
            let (record, lookup_first) = ops::retry(&store, &reply_id, force).await?;
            let due = record
                .next_attempt_at
                .map_or_else(String::new, |at| at.format("%H:%M:%S UTC").to_string());
            let how = if lookup_first {
                format!(
                    "an earlier attempt may have created the message, so the next attempt, at \
                     {due}, looks in the conversation before it sends"
                )
            } else if force {
                "forced: the next attempt sends without looking in the conversation".to_owned()
            } else {
                "the next attempt sends it".to_owned()
            };
            println!(
                "{} is queued again; {how} (a running goldrelay picks it up when it is due)",
                record.reply_id
            );
        }
    }
    Ok(())
}

async fn export(
    store: goldrelay::store::SharedStore,
    since: Option<String>,
    output: Option<PathBuf>,
    options: goldrelay::dataset::Options,
) -> anyhow::Result<()> {
    let mut out: Box<dyn std::io::Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("could not open {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    ops::export(
        store,
        since.as_deref(),
        options,
        &mut out,
        ops::progress_wanted(),
    )
    .await?;
    Ok(())
}
