//! Ingest: accepted replies per second and latency, one client and many, for
//! goldrelay (durable, delivering to a sandbox as in production) and for the
//! bare handler. Every run gets a fresh process and, for goldrelay, a fresh
//! database.

use crate::harness::{Database, Harness, TOKEN};
use crate::process::Process;
use crate::wrk::{Load, WrkRun};

/// The concurrent keep-alive clients of the "many" runs.
pub const MANY: u32 = 64;

pub struct Ingest {
    pub one: WrkRun,
    pub many: WrkRun,
    /// The larger peak resident memory of the two processes, in KiB.
    pub peak_rss_kib: u64,
}

/// Which server takes the load.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Bare,
    /// goldrelay, on a new database of this kind for each run.
    Relay(&'a Database),
}

pub async fn measure(h: &mut Harness, target: Target<'_>) -> anyhow::Result<Ingest> {
    let (one, rss_one) = run(h, target, 1).await?;
    let (many, rss_many) = run(h, target, MANY).await?;
    Ok(Ingest {
        one,
        many,
        peak_rss_kib: rss_one.max(rss_many),
    })
}

async fn run(h: &mut Harness, target: Target<'_>, clients: u32) -> anyhow::Result<(WrkRun, u64)> {
    let (server, sandbox) = start(h, target).await?;
    let label = match target {
        Target::Bare => "bare handler",
        Target::Relay(_) => "goldrelay",
    };
    eprintln!("== ingest: {label}, {clients} client(s), {} s", h.seconds);
    let run_id = format!("{}-ingest-{clients}", h.run_id);
    // One reply through the same door first: a body the server refuses
    // would otherwise show up only as a row of errors.
    h.support(&server.url)
        .post(&format!("{run_id}-check"), 1)
        .await?;
    let result = Load {
        wrk: &h.tools.wrk,
        script: &h.script,
        url: &server.url,
        token: TOKEN,
        run_id: &run_id,
        clients,
        seconds: h.seconds,
    }
    .run()
    .await?;
    let rss = server.peak_rss_kib()?;
    server.stop().await;
    if let Some(sandbox) = sandbox {
        sandbox.stop().await;
    }
    Ok((result, rss))
}

async fn start(h: &mut Harness, target: Target<'_>) -> anyhow::Result<(Process, Option<Process>)> {
    let Target::Relay(database) = target else {
        return Ok((h.bare().await?, None));
    };
    let pair = h.relay_and_sandbox(database, &[]).await?;
    Ok((pair.relay, Some(pair.sandbox)))
}
