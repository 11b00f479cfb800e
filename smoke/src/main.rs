//! `smoke`: the post-deploy check operators run against a live goldrelay.
//! It talks to goldrelay and Chatwoot over HTTP only, like any client.

mod chatwoot;
mod checks;
mod cli;
mod exit;
mod http;
mod pitfalls;
mod plan;
mod progress;
mod redact;
mod relay;
mod report;
mod runner;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Usage errors exit here with clap's code 2, before any request.
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return exit::Exit::Usage.into();
        }
    };
    runtime.block_on(runner::run(cli)).into()
}
