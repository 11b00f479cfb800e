//! A deterministic simulation of delivery: seeded schedules of posts,
//! deploys, crashes, lost outcomes, skewed clocks and a misbehaving Chatwoot,
//! on a virtual clock, with goldrelay's own decision functions deciding every
//! attempt. See "The simulation" in `docs/delivery.md`.
//!
//! `SIM_SEEDS=<n>` sets how many seeds the sweep runs (10 000 by default);
//! `SIM_SEED=<n>` replays one seed and prints its trace (`SIM_OLD=<rule>`
//! with it puts one of the old rules back).

mod chatwoot;
mod check;
mod model;
mod store;

use model::{OldRule, World};

/// A run that broke an invariant: the complaint, and the trace when asked for.
struct Failure {
    seed: u64,
    what: String,
    at: i64,
}

fn simulate(seed: u64, old: Option<OldRule>, tracing: bool) -> (Result<(), Failure>, World) {
    let mut world = World::new(seed, old, tracing);
    let ran = world
        .run(check::always)
        .and_then(|()| check::at_end(&world));
    let at = world.t;
    (ran.map_err(|what| Failure { seed, what, at }), world)
}

/// Runs `seed` again with its trace, for the report.
fn replay(seed: u64, old: Option<OldRule>) -> String {
    let (result, world) = simulate(seed, old, true);
    let mut text = format!("seed {seed}: {:#?}\n", world.p);
    for line in world.trace.unwrap_or_default() {
        text.push_str(&line);
        text.push('\n');
    }
    if let Err(f) = result {
        text.push_str(&format!("VIOLATION at {} ms: {}\n", f.at, f.what));
    }
    text
}

fn env_number(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    Some(
        raw.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {raw:?}")),
    )
}

fn env_rule() -> Option<OldRule> {
    let raw = std::env::var("SIM_OLD").ok()?;
    let names: Vec<&str> = OldRule::ALL.iter().map(|r| r.name()).collect();
    Some(OldRule::parse(&raw).unwrap_or_else(|| panic!("SIM_OLD must be one of {names:?}")))
}

/// The seeds `0..count` that break an invariant, over every core.
fn sweep(count: u64, old: Option<OldRule>) -> Vec<Failure> {
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get) as u64;
    let mut failures: Vec<Failure> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                s.spawn(move || {
                    (k..count)
                        .step_by(threads as usize)
                        .filter_map(|seed| simulate(seed, old, false).0.err())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a simulation thread"))
            .collect()
    });
    failures.sort_by_key(|f| f.seed);
    failures
}

#[test]
fn every_simulated_schedule_delivers_each_approved_reply_once_in_order_or_says_why_not() {
    if let Some(seed) = env_number("SIM_SEED") {
        let old = env_rule();
        let (result, _) = simulate(seed, old, false);
        println!("{}", replay(seed, old));
        if let Err(f) = result {
            panic!("seed {seed} breaks an invariant at {} ms: {}", f.at, f.what);
        }
        return;
    }
    let count = env_number("SIM_SEEDS").unwrap_or(10_000);
    let started = std::time::Instant::now();
    let failures = sweep(count, None);
    println!("{count} seeds in {:.1?}", started.elapsed());
    for f in failures.iter().take(20) {
        println!("seed {} at {} ms: {}", f.seed, f.at, f.what);
    }
    if let Some(first) = failures.first() {
        println!("{}", replay(first.seed, None));
        let seeds: Vec<u64> = failures.iter().map(|f| f.seed).collect();
        panic!(
            "{} of {count} seeds break an invariant (seeds {seeds:?}); the first, seed {}, at {} ms: {}\n\
             replay it with: SIM_SEED={} cargo test --test simulation -- --nocapture",
            failures.len(),
            first.seed,
            first.at,
            first.what,
            first.seed
        );
    }
}

#[test]
fn a_seed_replays_identically() {
    for seed in [3, 41, 977] {
        let a = replay(seed, None);
        let b = replay(seed, None);
        assert_eq!(a, b, "seed {seed} ran two different ways");
    }
}

/// The first of `0..within` seeds under which `old` breaks an invariant
/// that today's rules keep on the same seed.
fn first_found(old: OldRule, within: u64) -> Option<Failure> {
    (0..within).find_map(|seed| {
        let broken = simulate(seed, Some(old), false).0.err()?;
        simulate(seed, None, false).0.is_ok().then_some(broken)
    })
}

fn finds(old: OldRule) {
    let within = 3_000;
    match first_found(old, within) {
        Some(f) => println!(
            "{}: first found by seed {} at {} ms: {}",
            old.name(),
            f.seed,
            f.at,
            f.what
        ),
        None => panic!(
            "the simulation found nothing wrong with the old rule {} in {within} seeds",
            old.name()
        ),
    }
}

#[test]
fn it_finds_the_claim_that_let_a_lookup_follow_a_lost_lease_at_once() {
    finds(OldRule::ClaimWithoutLookupDelay);
}

#[test]
fn it_finds_the_drain_that_released_jobs_due_now() {
    finds(OldRule::DrainReleasesDue);
}

#[test]
fn it_finds_waiting_for_a_send_slot_counted_as_maybe_sent() {
    finds(OldRule::SlotWaitIsMaybeSent);
}

#[test]
fn it_finds_the_lookup_that_paged_before_the_smallest_id_seen() {
    finds(OldRule::LookupBySmallestId);
}

#[test]
fn it_finds_a_marker_taken_for_ours_whoever_sent_it() {
    finds(OldRule::MarkerOnlyMatch);
}

#[test]
fn it_finds_leases_compared_with_each_instances_own_clock() {
    finds(OldRule::InstanceClockLeases);
}

#[test]
fn it_finds_a_validation_failed_422_called_dead_without_a_lookup() {
    finds(OldRule::ValidationFailedIsDead);
}
