//! The simulated world: a virtual clock, an event queue, goldrelay instances
//! running the worker's loop and attempts, the modelled store and Chatwoot,
//! and the faults. Every delivery decision is goldrelay's own public function.

use crate::chatwoot::{self, secs, Chatwoot, Msg, Sender};
use crate::store::{reply_id, Slot, Store};
use chrono::{DateTime, TimeZone, Utc};
use goldrelay::chatwoot::{classify, Lookup, SendError};
use goldrelay::delivery::{
    abandoned, after_failure, retry_or_give_up, unsent, Policy, Step, TOKEN_RECHECK,
};
use goldrelay::domain::{ChatwootEvent, OwnUser, Status};
use goldrelay::store::{Job, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Virtual milliseconds since the start of a run.
pub type Ms = i64;

/// The virtual clock's zero, on a minute boundary (rack-attack's windows).
fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

pub fn at(t: Ms) -> DateTime<Utc> {
    base() + chrono::Duration::milliseconds(t)
}

pub fn ms(t: DateTime<Utc>) -> Ms {
    (t - base()).num_milliseconds()
}

fn dur(t: Ms) -> Duration {
    Duration::from_millis(t.max(0) as u64)
}

fn ms_of(d: Duration) -> Ms {
    d.as_millis() as Ms
}

/// A rule goldrelay had before issue 18, put back into the model to show the
/// simulation finds what it broke. Each changes one rule of the model, never
/// an invariant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldRule {
    /// The claim leaves `due_at` as it was: after a lost lease the next
    /// attempt looks as soon as the lease ends.
    ClaimWithoutLookupDelay,
    /// The drain hands every leased job back due now (`release_all`).
    DrainReleasesDue,
    /// An attempt that waited for a send slot and sent nothing is recorded
    /// as maybe sent.
    SlotWaitIsMaybeSent,
    /// The lookup pages back with `before=<smallest id seen>` on pages that
    /// Chatwoot orders by `created_at`, until `created_at` passes the reply's.
    LookupBySmallestId,
    /// A message carrying the reply's marker is taken for ours, whoever sent it.
    MarkerOnlyMatch,
    /// Leases and due times compare with each instance's own clock.
    InstanceClockLeases,
    /// A 422 "Validation failed: …" is dead at once, without a lookup.
    ValidationFailedIsDead,
}

impl OldRule {
    pub const ALL: [OldRule; 7] = [
        OldRule::ClaimWithoutLookupDelay,
        OldRule::DrainReleasesDue,
        OldRule::SlotWaitIsMaybeSent,
        OldRule::LookupBySmallestId,
        OldRule::MarkerOnlyMatch,
        OldRule::InstanceClockLeases,
        OldRule::ValidationFailedIsDead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OldRule::ClaimWithoutLookupDelay => "claim-without-lookup-delay",
            OldRule::DrainReleasesDue => "drain-releases-due",
            OldRule::SlotWaitIsMaybeSent => "slot-wait-is-maybe-sent",
            OldRule::LookupBySmallestId => "lookup-by-smallest-id",
            OldRule::MarkerOnlyMatch => "marker-only-match",
            OldRule::InstanceClockLeases => "instance-clock-leases",
            OldRule::ValidationFailedIsDead => "validation-failed-is-dead",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// goldrelay's worker constants (`delivery/mod.rs`).
const MAX_IDLE: Ms = 2_000;
const LEASE_MARGIN: Ms = 5_000;
const STORE_RETRY: Ms = 500;
const RECORD_TRIES: u32 = 4;
const RACK_ATTACK_WINDOW: i64 = 60;
const PROFILE_RETRY: Ms = 5_000;

#[derive(Debug)]
enum Ev {
    Post {
        conv: usize,
    },
    Poll {
        inst: usize,
        inc: u32,
    },
    Wake {
        inst: usize,
        inc: u32,
        fid: u64,
        gen: u64,
    },
    Answer {
        inst: usize,
        inc: u32,
        fid: u64,
        gen: u64,
        answer: Answer,
    },
    Deadline {
        inst: usize,
        inc: u32,
        fid: u64,
    },
    Record {
        inst: usize,
        inc: u32,
        fid: u64,
    },
    Learn {
        inst: usize,
        inc: u32,
    },
    Learned {
        inst: usize,
        inc: u32,
        ok: bool,
    },
    Commit {
        conv: usize,
        reply: usize,
        created_at: i64,
        content: String,
        create: u64,
    },
    Echo {
        msg: i64,
        copy: u32,
    },
    Writes {
        conv: usize,
    },
    Impostor {
        reply: usize,
    },
    TokenRotated,
    Sigterm {
        inst: usize,
    },
    DrainEnd {
        inst: usize,
        inc: u32,
    },
    Crash {
        inst: usize,
    },
    Start {
        inst: usize,
    },
    FaultsEnd,
}

impl Ev {
    /// Events that keep the run from being quiet.
    fn pending_work(&self) -> bool {
        matches!(self, Ev::Commit { .. } | Ev::Echo { .. } | Ev::Start { .. })
    }
}

#[derive(Debug)]
enum Answer {
    Profile(Result<(), SendError>),
    Page(Result<Vec<Msg>, SendError>),
    Create(Result<i64, SendError>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Up,
    Draining,
    Down,
}

/// What a flight does once its pacing is over.
#[derive(Debug, Clone, Copy)]
enum Then {
    LookStart,
    AfterPage,
    RangePage,
    BeforePage,
    Create,
}

#[derive(Debug)]
enum Stage {
    /// Waiting out the pause, then a send slot (`pace_until`).
    Pace { latest: Option<Ms>, then: Then },
    /// The slot is reserved; sending when it starts.
    Slot { then: Then },
    /// A request is out.
    Await,
    /// The outcome is being offered to the store.
    Recording {
        outcome: Outcome,
        tries_left: u32,
        delay: Ms,
        now: Ms,
    },
}

#[derive(Debug, Clone)]
enum Purpose {
    /// `check_earlier`: an earlier attempt may have created the message.
    Earlier,
    /// `after_unprocessable`: the create answered this 422.
    After422(SendError),
}

#[derive(Debug)]
struct Look {
    purpose: Purpose,
    lo: i64,
    hi: i64,
    requests: usize,
    /// The old lookup's `before=` and its horizon (unix seconds).
    before: Option<i64>,
    horizon: i64,
}

#[derive(Debug)]
struct Flight {
    reply: usize,
    job: Job,
    sent_at: Option<DateTime<Utc>>,
    /// Bumped whenever a pending wake or answer no longer applies.
    gen: u64,
    stage: Stage,
    look: Option<Look>,
}

#[derive(Debug)]
struct Instance {
    skew: Ms,
    concurrency: usize,
    inc: u32,
    owner: String,
    run: Run,
    me: bool,
    pause_until: Option<Ms>,
    flights: BTreeMap<u64, Flight>,
    poll_at: Option<Ms>,
}

/// What a run draws from its seed.
#[derive(Debug, Clone)]
pub struct Params {
    pub instances: usize,
    pub skews: Vec<Ms>,
    pub concurrency: Vec<usize>,
    pub conversations: usize,
    pub replies: usize,
    pub lease: Ms,
    pub lookup_delay: Ms,
    pub retry_base: Ms,
    pub retry_max: Ms,
    pub max_attempts: u32,
    pub max_age: Ms,
    pub send_rate: u32,
    pub drain: Ms,
    pub faults_end: Ms,
    /// The chance that a Chatwoot request misbehaves while faults last.
    pub p_fault: f64,
    /// The chance that one offer of an outcome to the store fails.
    pub p_lost_outcome: f64,
    pub deploys: usize,
    pub crashes: usize,
}

impl Params {
    fn draw(rng: &mut StdRng) -> Self {
        let instances = rng.random_range(1..=2);
        let lease = rng.random_range(10..=40) * 1000;
        Self {
            instances,
            skews: (0..instances)
                .map(|_| rng.random_range(-60_000..=60_000))
                .collect(),
            concurrency: (0..instances).map(|_| rng.random_range(1..=4)).collect(),
            conversations: rng.random_range(2..=6),
            replies: rng.random_range(3..=10),
            lease,
            lookup_delay: rng.random_range(15..=60) * 1000,
            retry_base: rng.random_range(500..=2000),
            retry_max: rng.random_range(10..=60) * 1000,
            max_attempts: rng.random_range(3..=8),
            max_age: rng.random_range(5..=20) * 60_000,
            send_rate: if rng.random_bool(0.5) {
                0
            } else {
                rng.random_range(1..=5)
            },
            drain: rng.random_range(1..=10) * 1000,
            faults_end: rng.random_range(60..=240) * 1000,
            p_fault: rng.random_range(0.05..0.6),
            p_lost_outcome: [0.0, 0.1, 0.3][rng.random_range(0..3)],
            deploys: rng.random_range(0..=3),
            crashes: rng.random_range(0..=2),
        }
    }

    fn policy(&self, concurrency: usize) -> Policy {
        Policy {
            retry_base: dur(self.retry_base),
            retry_max: dur(self.retry_max),
            max_attempts: self.max_attempts,
            lookup_delay: dur(self.lookup_delay),
            max_age: dur(self.max_age),
            concurrency,
            send_rate: self.send_rate,
            lease: dur(self.lease),
            drain: dur(self.drain),
            idempotent_creates: false,
            status_reconcile: None,
        }
    }

    /// `GOLDRELAY_CHATWOOT_TIMEOUT`: the lease is 3 × the timeout + 5 s.
    fn timeout(&self) -> Ms {
        (self.lease - LEASE_MARGIN) / 3
    }

    fn deadline(&self) -> Ms {
        self.lease - LEASE_MARGIN
    }
}

/// Why a reply may be called uncertain: something the store could not know.
#[derive(Debug, Default, Clone)]
pub struct Doubt {
    /// A create request for it left goldrelay.
    pub create_left: bool,
    /// An attempt on it ended without its outcome being applied.
    pub outcome_lost: bool,
}

pub struct World {
    pub old: Option<OldRule>,
    pub p: Params,
    rng: StdRng,
    pub t: Ms,
    queue: BTreeMap<(Ms, u8, u64), Ev>,
    seq: u64,
    pending_work: usize,
    faults: bool,
    token_refused_until: Ms,
    insts: Vec<Instance>,
    next_fid: u64,
    next_create: u64,
    /// The message each create committed, by create.
    committed: BTreeMap<u64, i64>,
    pub store: Store,
    pub chatwoot: Chatwoot,
    /// Replies that were `dead` at some point (order skips them).
    pub ever_dead: BTreeSet<usize>,
    pub doubts: Vec<Doubt>,
    /// Replies Chatwoot refuses for good (`Validation failed: Content is too long`).
    invalid: BTreeSet<usize>,
    pub trace: Option<Vec<String>>,
}

impl World {
    pub fn new(seed: u64, old: Option<OldRule>, tracing: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let p = Params::draw(&mut rng);
        let first_id = rng.random_range(1..1000);
        let mut w = Self {
            old,
            insts: (0..p.instances)
                .map(|i| Instance {
                    skew: p.skews[i],
                    concurrency: p.concurrency[i],
                    inc: 0,
                    owner: String::new(),
                    run: Run::Down,
                    me: false,
                    pause_until: None,
                    flights: BTreeMap::new(),
                    poll_at: None,
                })
                .collect(),
            p,
            rng,
            t: 0,
            queue: BTreeMap::new(),
            seq: 0,
            pending_work: 0,
            faults: true,
            token_refused_until: 0,
            next_fid: 0,
            next_create: 0,
            committed: BTreeMap::new(),
            store: Store::default(),
            chatwoot: Chatwoot::new(first_id),
            ever_dead: BTreeSet::new(),
            doubts: Vec::new(),
            invalid: BTreeSet::new(),
            trace: tracing.then(Vec::new),
        };
        w.schedule_start();
        w
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(format!("{:>9} {}", self.t, line()));
        }
    }

    fn push(&mut self, t: Ms, ev: Ev) {
        if ev.pending_work() {
            self.pending_work += 1;
        }
        self.seq += 1;
        // A commit at the same instant as anything else happens first: a
        // create committed "up to the lookup delay" is seen by a lookup then.
        let class = u8::from(!matches!(ev, Ev::Commit { .. }));
        self.queue.insert((t.max(self.t), class, self.seq), ev);
    }

    fn schedule_start(&mut self) {
        let p = self.p.clone();
        for i in 0..p.instances {
            self.push(0, Ev::Start { inst: i });
        }
        // Conversations start with a few messages of the customer's.
        for conv in 0..p.conversations {
            for _ in 0..self.rng.random_range(0..=4) {
                let created = self.rng.random_range(-600..0);
                self.chatwoot
                    .commit(conv, created, Sender::Contact, "hi".into(), None);
            }
        }
        for _ in 0..p.replies {
            let t = self.rng.random_range(0..=p.faults_end * 7 / 10);
            let conv = self.rng.random_range(0..p.conversations);
            self.push(t, Ev::Post { conv });
        }
        for conv in 0..p.conversations {
            let t = self.rng.random_range(0..p.faults_end);
            self.push(t, Ev::Writes { conv });
        }
        for _ in 0..p.deploys {
            let t = self.rng.random_range(1000..p.faults_end);
            let inst = self.rng.random_range(0..p.instances);
            self.push(t, Ev::Sigterm { inst });
        }
        for _ in 0..p.crashes {
            let t = self.rng.random_range(1000..p.faults_end);
            let inst = self.rng.random_range(0..p.instances);
            self.push(t, Ev::Crash { inst });
        }
        if self.rng.random_bool(0.3) {
            let t = self.rng.random_range(0..p.faults_end);
            self.push(t, Ev::TokenRotated);
        }
        self.push(p.faults_end, Ev::FaultsEnd);
    }

    /// Runs to the end: faults stop, time runs on until nothing is left to
    /// do. `check` runs after every step; its first complaint ends the run.
    pub fn run(&mut self, check: impl Fn(&World) -> Result<(), String>) -> Result<(), String> {
        let limit = self.p.faults_end + self.p.max_age + 3_600_000;
        while let Some(((t, _, _), ev)) = self.queue.pop_first() {
            self.t = t;
            if ev.pending_work() {
                self.pending_work -= 1;
            }
            self.step(ev);
            check(self)?;
            if !self.faults && self.quiet() {
                return Ok(());
            }
            if self.t > limit {
                return Err("the run never settled".into());
            }
        }
        Ok(())
    }

    fn quiet(&self) -> bool {
        self.pending_work == 0
            && self.store.jobs.is_empty()
            && self.insts.iter().all(|i| i.flights.is_empty())
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Post { conv } => self.post(conv),
            Ev::Poll { inst, inc } => {
                if self.live(inst, inc) && self.insts[inst].poll_at == Some(self.t) {
                    self.insts[inst].poll_at = None;
                    self.poll(inst);
                }
            }
            Ev::Wake {
                inst,
                inc,
                fid,
                gen,
            } => {
                if self.flight_gen(inst, inc, fid) == Some(gen) {
                    self.woken(inst, fid);
                }
            }
            Ev::Answer {
                inst,
                inc,
                fid,
                gen,
                answer,
            } => {
                if self.flight_gen(inst, inc, fid) == Some(gen) {
                    self.answered(inst, fid, answer);
                }
            }
            Ev::Deadline { inst, inc, fid } => {
                if self.flight_gen(inst, inc, fid).is_some() {
                    self.cut_off(inst, fid);
                }
            }
            Ev::Record { inst, inc, fid } => {
                if self.flight_gen(inst, inc, fid).is_some() {
                    self.try_record(inst, fid);
                }
            }
            Ev::Learn { inst, inc } => {
                if self.live(inst, inc) && !self.insts[inst].me {
                    let (ok, lat) = match self.read_answer() {
                        Ok(()) => (true, self.latency()),
                        Err((_, lat)) => (false, lat),
                    };
                    self.push(self.t + lat, Ev::Learned { inst, inc, ok });
                }
            }
            Ev::Learned { inst, inc, ok } => {
                if self.live(inst, inc) {
                    if ok {
                        self.insts[inst].me = true;
                    } else if !self.insts[inst].me {
                        self.push(self.t + PROFILE_RETRY, Ev::Learn { inst, inc });
                    }
                }
            }
            Ev::Commit {
                conv,
                reply,
                created_at,
                content,
                create,
            } => {
                let id =
                    self.chatwoot
                        .commit(conv, created_at, Sender::Relay, content, Some(reply));
                self.committed.insert(create, id);
                self.note(|| {
                    format!("chatwoot commits {id}: reply {reply} in conversation {conv}")
                });
                self.echoes(id);
            }
            Ev::Echo { msg, copy } => self.echo(msg, copy),
            Ev::Writes { conv } => self.writes(conv),
            Ev::Impostor { reply } => {
                let row = &self.store.replies[reply];
                let (conv, content) = (row.conv, row.content.clone());
                let id =
                    self.chatwoot
                        .commit(conv, secs(self.t), Sender::Agent, content, Some(reply));
                self.note(|| {
                    format!("an agent posts {id} carrying reply {reply}'s marker and text")
                });
                self.echoes(id);
            }
            Ev::TokenRotated => {
                let len = self.rng.random_range(10_000..=90_000);
                self.token_refused_until = self.t + len;
                self.note(|| format!("Chatwoot refuses goldrelay's token for {len} ms"));
            }
            Ev::Sigterm { inst } => self.sigterm(inst),
            Ev::DrainEnd { inst, inc } => {
                if self.insts[inst].inc == inc && self.insts[inst].run == Run::Draining {
                    self.drain_end(inst);
                }
            }
            Ev::Crash { inst } => self.crash(inst),
            Ev::Start { inst } => self.start(inst),
            Ev::FaultsEnd => {
                self.faults = false;
                self.note(|| "faults stop".into());
            }
        }
    }

    fn live(&self, inst: usize, inc: u32) -> bool {
        let i = &self.insts[inst];
        i.inc == inc && i.run != Run::Down
    }

    fn flight_gen(&self, inst: usize, inc: u32, fid: u64) -> Option<u64> {
        if !self.live(inst, inc) {
            return None;
        }
        self.insts[inst].flights.get(&fid).map(|f| f.gen)
    }

    /// The time the worker reads (`Worker::now`): the store's clock, or
    /// under the old rule the instance's own.
    fn now_of(&self, inst: usize) -> Ms {
        if self.old == Some(OldRule::InstanceClockLeases) {
            self.t + self.insts[inst].skew
        } else {
            self.t
        }
    }

    fn latency(&mut self) -> Ms {
        self.rng.random_range(10..=600)
    }

    // ---- Support, other writers, echoes -------------------------------

    fn post(&mut self, conv: usize) {
        let idx = self.store.replies.len();
        let content = format!("approved answer {idx}");
        self.store.ingest(conv, content, self.t);
        self.doubts.push(Doubt::default());
        if self.rng.random_bool(0.03) {
            self.invalid.insert(idx);
        }
        self.note(|| format!("support posts reply {idx} to conversation {conv}"));
        if self.faults && self.rng.random_bool(0.25) {
            let t = self.t + self.rng.random_range(0..=60_000);
            self.push(t, Ev::Impostor { reply: idx });
        }
        for i in 0..self.insts.len() {
            let inc = self.insts[i].inc;
            if self.live(i, inc) && self.insts[i].run == Run::Up {
                self.poll_soon(i, self.t);
            }
        }
    }

    fn writes(&mut self, conv: usize) {
        if !self.faults {
            return;
        }
        let agent = self.rng.random_bool(0.4);
        // Some channels store the provider's time (`tiktok/message_service.rb`).
        let skew = if self.rng.random_bool(0.4) {
            self.rng.random_range(-120..=30)
        } else {
            0
        };
        let sender = if agent {
            Sender::Agent
        } else {
            Sender::Contact
        };
        let id = self.chatwoot.commit(
            conv,
            secs(self.t) + skew,
            sender,
            "another message".into(),
            None,
        );
        self.note(|| format!("{sender:?} writes {id} in conversation {conv}"));
        let next = self.t + self.rng.random_range(1_000..=30_000);
        self.push(next, Ev::Writes { conv });
    }

    /// Chatwoot's `message_created` webhooks for a marked message: delayed,
    /// reordered, duplicated (chatwoot#11901) or lost.
    fn echoes(&mut self, msg: i64) {
        let copies = [0, 1, 1, 1, 2][self.rng.random_range(0..5)];
        for copy in 0..copies {
            let t = self.t + self.rng.random_range(200..=60_000);
            self.push(t, Ev::Echo { msg, copy });
        }
    }

    fn echo(&mut self, id: i64, copy: u32) {
        let up: Vec<usize> = (0..self.insts.len())
            .filter(|&i| self.insts[i].run == Run::Up)
            .collect();
        if up.is_empty() {
            self.note(|| format!("echo of {id} lost: no instance answers"));
            return;
        }
        let inst = up[self.rng.random_range(0..up.len())];
        let Some(m) = self.chatwoot.msg(id).cloned() else {
            return;
        };
        let body = serde_json::json!({
            "event": "message_created",
            "id": m.id,
            "content": m.content,
            "message_type": if m.outgoing() { "outgoing" } else { "incoming" },
            "content_attributes": {"gold_reply_id": m.marker.map(reply_id)},
            "account": {"id": 1},
            "conversation": {"id": m.conv as i64 + 1},
            "sender": m.sender_json(),
        });
        let digest = format!("{id}:{copy}");
        let mut event = ChatwootEvent::parse(Some(format!("d-{id}-{copy}")), &body, &digest);
        let known = self.insts[inst].me;
        let me = if known {
            OwnUser::Is(chatwoot::RELAY_USER)
        } else {
            OwnUser::NotYetKnown
        };
        if self.old != Some(OldRule::MarkerOnlyMatch) {
            event.keep_only_ours(me);
        }
        self.note(|| format!("echo of {id} reaches instance {inst} (knows its user: {known})"));
        self.store.record_event(&event, self.t);
        self.mark_dead();
    }

    fn mark_dead(&mut self) {
        for (i, r) in self.store.replies.iter().enumerate() {
            if r.status == Status::Dead {
                self.ever_dead.insert(i);
            }
        }
    }

    // ---- Processes ------------------------------------------------------

    fn start(&mut self, inst: usize) {
        let i = &mut self.insts[inst];
        if i.run != Run::Down {
            return;
        }
        i.inc += 1;
        i.owner = format!("instance-{inst}-{}", i.inc);
        i.run = Run::Up;
        i.me = false;
        i.pause_until = None;
        i.flights.clear();
        i.poll_at = None;
        let inc = i.inc;
        self.note(|| format!("instance {inst} starts ({})", "a fresh owner"));
        self.push(self.t, Ev::Learn { inst, inc });
        self.poll_soon(inst, self.t);
    }

    fn restart_later(&mut self, inst: usize) {
        let t = self.t + self.rng.random_range(1_000..=15_000);
        self.push(t, Ev::Start { inst });
    }

    fn sigterm(&mut self, inst: usize) {
        if self.insts[inst].run != Run::Up {
            return;
        }
        self.note(|| format!("instance {inst} gets SIGTERM (a deploy)"));
        self.insts[inst].run = Run::Draining;
        let inc = self.insts[inst].inc;
        self.push(self.t + self.p.drain, Ev::DrainEnd { inst, inc });
        if self.insts[inst].flights.is_empty() {
            self.exit(inst);
        }
    }

    /// The drain period is over: what every abandoned attempt knows is
    /// recorded (`Worker::drain`), then the process exits.
    fn drain_end(&mut self, inst: usize) {
        let flights = std::mem::take(&mut self.insts[inst].flights);
        for (_, f) in flights {
            if self.old == Some(OldRule::DrainReleasesDue) {
                self.doubts[f.reply].outcome_lost = true;
                continue;
            }
            let now = self.now_of(inst);
            let outcome = abandoned(&f.job, f.sent_at, &self.p.policy(1), at(now));
            self.note(|| {
                format!(
                    "instance {inst} abandons reply {}: {}",
                    f.reply,
                    brief(&outcome)
                )
            });
            if self.store_fails() {
                self.doubts[f.reply].outcome_lost = true;
                continue;
            }
            let owner = self.insts[inst].owner.clone();
            if !self.store.finish(f.reply, &owner, outcome, now) {
                self.doubts[f.reply].outcome_lost = true;
            }
        }
        self.mark_dead();
        self.exit(inst);
    }

    fn exit(&mut self, inst: usize) {
        if self.old == Some(OldRule::DrainReleasesDue) {
            let (owner, now) = (self.insts[inst].owner.clone(), self.now_of(inst));
            self.store.release_all(&owner, now);
        }
        self.note(|| format!("instance {inst} exits"));
        self.insts[inst].run = Run::Down;
        self.restart_later(inst);
    }

    fn crash(&mut self, inst: usize) {
        if self.insts[inst].run == Run::Down {
            return;
        }
        self.note(|| format!("instance {inst} crashes"));
        let flights = std::mem::take(&mut self.insts[inst].flights);
        for f in flights.values() {
            self.doubts[f.reply].outcome_lost = true;
        }
        self.insts[inst].run = Run::Down;
        self.restart_later(inst);
    }

    fn store_fails(&mut self) -> bool {
        self.faults && self.rng.random_bool(self.p.p_lost_outcome)
    }

    // ---- The worker loop (`Worker::run`, `claim_and_spawn`) -------------

    fn poll_soon(&mut self, inst: usize, t: Ms) {
        let i = &mut self.insts[inst];
        if i.poll_at.is_some_and(|p| p <= t) {
            return;
        }
        i.poll_at = Some(t);
        let inc = i.inc;
        self.push(t, Ev::Poll { inst, inc });
    }

    fn pause_left(&self, inst: usize) -> Option<Ms> {
        self.insts[inst]
            .pause_until
            .map(|u| u - self.t)
            .filter(|&left| left > 0)
    }

    fn poll(&mut self, inst: usize) {
        if self.insts[inst].run != Run::Up {
            return;
        }
        let conc = self.insts[inst].concurrency;
        let busy = self.insts[inst].flights.len();
        let free = conc - busy;
        let group = conc.div_ceil(4);
        if free == 0 || (free < group && busy > 0) {
            return self.poll_soon(inst, self.t + MAX_IDLE);
        }
        if let Some(paused) = self.pause_left(inst) {
            return self.poll_soon(inst, self.t + paused.min(MAX_IDLE));
        }
        let now = self.now_of(inst);
        let owner = self.insts[inst].owner.clone();
        let look_after = ms_of(self.p.policy(conc).look_after());
        let jobs = self
            .store
            .claim(&owner, now, self.p.lease, look_after, free, self.old);
        let full = jobs.len() == free;
        for (reply, job) in jobs {
            self.spawn(inst, reply, job);
        }
        if full {
            return self.poll_soon(inst, self.t + MAX_IDLE);
        }
        let wait = match self.store.next_due() {
            Some(due) => (due - self.now_of(inst)).clamp(5, MAX_IDLE),
            None => MAX_IDLE,
        };
        self.poll_soon(inst, self.t + wait);
    }

    fn spawn(&mut self, inst: usize, reply: usize, job: Job) {
        self.next_fid += 1;
        let fid = self.next_fid;
        let inc = self.insts[inst].inc;
        self.note(|| {
            format!(
                "instance {inst} claims reply {reply} (attempt {}, maybe sent: {})",
                job.attempt, job.maybe_sent
            )
        });
        let look_first = job.maybe_sent && !self.p.policy(1).idempotent_creates;
        self.insts[inst].flights.insert(
            fid,
            Flight {
                reply,
                job,
                sent_at: None,
                gen: 0,
                stage: Stage::Await,
                look: None,
            },
        );
        self.push(self.t + self.p.deadline(), Ev::Deadline { inst, inc, fid });
        if look_first {
            self.start_look(inst, fid, Purpose::Earlier);
        } else {
            self.begin_create(inst, fid);
        }
    }

    fn flight(&mut self, inst: usize, fid: u64) -> &mut Flight {
        self.insts[inst]
            .flights
            .get_mut(&fid)
            .expect("a live flight")
    }

    // ---- Pacing (`pace_until`) ------------------------------------------

    fn pace(&mut self, inst: usize, fid: u64, latest: Option<Ms>, then: Then) {
        self.flight(inst, fid).stage = Stage::Pace { latest, then };
        self.pace_step(inst, fid);
    }

    fn wake_at(&mut self, inst: usize, fid: u64, t: Ms) {
        let inc = self.insts[inst].inc;
        let gen = self.flight(inst, fid).gen;
        self.push(
            t,
            Ev::Wake {
                inst,
                inc,
                fid,
                gen,
            },
        );
    }

    fn pace_step(&mut self, inst: usize, fid: u64) {
        let Stage::Pace { latest, then } = self.flight(inst, fid).stage else {
            return;
        };
        if let Some(wait) = self.pause_left(inst) {
            if latest.is_some_and(|l| self.t + wait > l) {
                let at = self.now_of(inst) + wait;
                return self.no_slot(inst, fid, at);
            }
            return self.wake_at(inst, fid, self.t + wait);
        }
        if self.p.send_rate == 0 {
            return self.paced(inst, fid, then);
        }
        let now = self.now_of(inst);
        let latest_at = latest.map(|l| now + (l - self.t).max(0));
        match self.store.reserve_send(self.p.send_rate, now, latest_at) {
            Slot::NotBefore(slot) => self.no_slot(inst, fid, slot),
            Slot::Reserved(slot) if slot <= now => self.paced(inst, fid, then),
            Slot::Reserved(slot) => {
                self.flight(inst, fid).stage = Stage::Slot { then };
                self.wake_at(inst, fid, self.t + (slot - now));
            }
        }
    }

    fn woken(&mut self, inst: usize, fid: u64) {
        match self.flight(inst, fid).stage {
            Stage::Pace { .. } => self.pace_step(inst, fid),
            Stage::Slot { then } => self.paced(inst, fid, then),
            _ => {}
        }
    }

    /// No send slot starts in time for the create: nothing was sent.
    fn no_slot(&mut self, inst: usize, fid: u64, slot: Ms) {
        let why = "no send slot was free in time; nothing was sent".to_owned();
        let outcome = self.nothing_sent(inst, fid, slot, why);
        self.record(inst, fid, outcome);
    }

    fn nothing_sent(&mut self, inst: usize, fid: u64, at_ms: Ms, why: String) -> Outcome {
        let job = self.flight(inst, fid).job.clone();
        let policy = self.p.policy(1);
        if self.old == Some(OldRule::SlotWaitIsMaybeSent) {
            let failed = SendError::Transient {
                status: None,
                retry_after: None,
                maybe_created: true,
                detail: why,
            };
            let jitter = self.rng.random::<f64>();
            let now = at(self.now_of(inst));
            return retry_or_give_up(&job, failed, Step::Create, &policy, now, jitter);
        }
        unsent(&job, at(at_ms), why, &policy)
    }

    fn paced(&mut self, inst: usize, fid: u64, then: Then) {
        self.flight(inst, fid).stage = Stage::Await;
        match then {
            Then::LookStart => {
                if self.insts[inst].me {
                    self.outer(inst, fid);
                } else {
                    let (answer, lat) = match self.read_answer() {
                        Ok(()) => (Ok(()), self.latency()),
                        Err((e, lat)) => (Err(e), lat),
                    };
                    self.answer_at(inst, fid, lat, Answer::Profile(answer));
                }
            }
            Then::AfterPage => {
                let look = self.flight(inst, fid).look.as_mut().expect("a lookup");
                look.requests += 1;
                let lo = look.lo;
                self.page(inst, fid, Some(lo), None);
            }
            Then::RangePage => {
                let look = self.flight(inst, fid).look.as_mut().expect("a lookup");
                look.requests += 1;
                let (lo, hi) = (look.lo, look.hi);
                self.page(inst, fid, Some(lo + 1), Some(hi));
            }
            Then::BeforePage => {
                let look = self.flight(inst, fid).look.as_mut().expect("a lookup");
                look.requests += 1;
                let before = look.before;
                self.page(inst, fid, None, before);
            }
            Then::Create => self.create(inst, fid),
        }
    }

    fn answer_at(&mut self, inst: usize, fid: u64, lat: Ms, answer: Answer) {
        let inc = self.insts[inst].inc;
        let gen = self.flight(inst, fid).gen;
        self.push(
            self.t + lat,
            Ev::Answer {
                inst,
                inc,
                fid,
                gen,
                answer,
            },
        );
    }

    // ---- Chatwoot's answers ---------------------------------------------

    /// A read (profile or message list) that may fail while faults last;
    /// the error and when it comes.
    fn read_answer(&mut self) -> Result<(), (SendError, Ms)> {
        let lat = self.latency();
        if self.faults && self.t < self.token_refused_until {
            return Err((http(401, r#"{"error":"Invalid Access Token"}"#, None), lat));
        }
        if !self.faults || !self.rng.random_bool(self.p.p_fault / 2.0) {
            return Ok(());
        }
        let timeout = self.p.timeout();
        Err(match self.rng.random_range(0..5) {
            0 => (http(502, "<html>Bad Gateway</html>", None), lat),
            1 => (transport(true, "Chatwoot lookup timed out"), timeout),
            2 => (http(429, "Retry later\n", self.retry_after()), lat),
            3 => (http(403, "<html><body>Forbidden</body></html>", None), lat),
            _ => (http(404, "<html>Not Found</html>", None), lat),
        })
    }

    fn retry_after(&mut self) -> Option<u64> {
        self.rng
            .random_bool(0.3)
            .then(|| self.rng.random_range(1..=30))
    }

    fn page(&mut self, inst: usize, fid: u64, after: Option<i64>, before: Option<i64>) {
        let reply = self.flight(inst, fid).reply;
        let conv = self.store.replies[reply].conv;
        let answer = match self.read_answer() {
            Ok(()) => (Ok(self.chatwoot.list(conv, after, before)), self.latency()),
            Err((e, lat)) => (Err(e), lat),
        };
        self.note(|| format!("reply {reply}: list after={after:?} before={before:?}"));
        self.answer_at(inst, fid, answer.1, Answer::Page(answer.0));
    }

    /// The create request leaves: Chatwoot decides whether and when it
    /// commits (from at once up to the lookup delay, or never) and what
    /// goldrelay hears back, and when.
    fn create(&mut self, inst: usize, fid: u64) {
        let now = self.now_of(inst);
        let f = self.flight(inst, fid);
        f.sent_at = Some(at(now));
        let reply = f.reply;
        let content = f.job.content.clone();
        self.doubts[reply].create_left = true;
        let conv = self.store.replies[reply].conv;
        let timeout = self.p.timeout();
        let lat = self.latency();
        let delay = self.commit_delay();
        let kind = if self.invalid.contains(&reply) {
            Kind::Invalid
        } else if self.faults && self.t < self.token_refused_until {
            Kind::TokenRefused
        } else if self.faults && self.rng.random_bool(self.p.p_fault) {
            KINDS[self.rng.random_range(0..KINDS.len())]
        } else {
            Kind::Ok
        };
        self.note(|| {
            format!("instance {inst} sends reply {reply}: {kind:?}, commits after {delay} ms")
        });
        self.next_create += 1;
        let create = self.next_create;
        if kind.commits() {
            let created_at = secs(self.t);
            let ev = Ev::Commit {
                conv,
                reply,
                created_at,
                content,
                create,
            };
            self.push(self.t + delay, ev);
        }
        // Rails answers after its transaction; the client may time out first.
        let after_commit = |answer: Result<i64, SendError>| {
            if delay + lat > timeout {
                (Err(transport(true, "Chatwoot timed out")), timeout)
            } else {
                (answer, delay + lat)
            }
        };
        let (answer, when) = match kind {
            // The id is known at commit; the answer names that commit's message.
            Kind::Ok => after_commit(Ok(create as i64)),
            Kind::Lost | Kind::Dropped => (Err(transport(true, "Chatwoot timed out")), timeout),
            Kind::Gateway5xxAfter => {
                let when = self.rng.random_range(lat..=timeout.max(lat));
                (Err(http(504, "<html>Gateway Time-out</html>", None)), when)
            }
            Kind::Error5xxBefore => (
                Err(http(503, "<html>Service Unavailable</html>", None)),
                lat,
            ),
            Kind::Redis422 => after_commit(Err(http(
                422,
                r#"{"error":"Redis::CannotConnectError: Error connecting to Redis"}"#,
                None,
            ))),
            // Enterprise's `conversation.open!` after the save (`enterprise/app/models/enterprise/message.rb`).
            Kind::Enterprise422 => after_commit(Err(http(
                422,
                r#"{"error":"Validation failed: Assignee is not a member of the inbox"}"#,
                None,
            ))),
            Kind::Flood422 => (
                Err(http(
                    422,
                    r#"{"error":"Validation failed: Too many messages"}"#,
                    None,
                )),
                lat,
            ),
            Kind::Throttled => {
                let ra = self.retry_after();
                (Err(http(429, "Retry later\n", ra)), lat)
            }
            Kind::ProxyHtml => {
                let status = [401, 403, 404][self.rng.random_range(0..3)];
                (
                    Err(http(
                        status,
                        "<html><body>Denied by proxy</body></html>",
                        None,
                    )),
                    lat,
                )
            }
            Kind::TokenRefused => (
                Err(http(401, r#"{"error":"Invalid Access Token"}"#, None)),
                lat,
            ),
            Kind::Refused => (Err(transport(false, "Chatwoot could not connect")), lat),
            Kind::Invalid => (
                Err(http(
                    422,
                    r#"{"error":"Validation failed: Content is too long (maximum is 150000 characters)"}"#,
                    None,
                )),
                lat,
            ),
        };
        self.answer_at(inst, fid, when, Answer::Create(answer));
    }

    fn commit_delay(&mut self) -> Ms {
        let ld = self.p.lookup_delay;
        match self.rng.random_range(0..10) {
            0..=2 => 0,
            3..=5 => self.rng.random_range(0..=self.p.timeout()),
            6 => ld,
            _ => self.rng.random_range(0..=ld),
        }
    }

    fn answered(&mut self, inst: usize, fid: u64, answer: Answer) {
        match answer {
            Answer::Profile(Ok(())) => {
                self.insts[inst].me = true;
                self.outer(inst, fid);
            }
            Answer::Profile(Err(e)) => self.look_done(inst, fid, Err(e)),
            Answer::Page(result) => self.page_read(inst, fid, result),
            Answer::Create(result) => self.created(inst, fid, result),
        }
    }

    // ---- The attempt (`Worker::attempt`) --------------------------------

    fn begin_create(&mut self, inst: usize, fid: u64) {
        let latest = self.t + self.p.deadline() * 2 / 3;
        self.pace(inst, fid, Some(latest), Then::Create);
    }

    fn created(&mut self, inst: usize, fid: u64, result: Result<i64, SendError>) {
        let reply = self.flight(inst, fid).reply;
        let job = self.flight(inst, fid).job.clone();
        match result {
            Ok(create) => {
                let id = self.committed[&(create as u64)];
                self.went_through(inst);
                self.note(|| format!("reply {reply}: Chatwoot answered 200 with {id}"));
                self.record(inst, fid, Outcome::Delivered { message_id: id });
            }
            Err(e) if e.status() == Some(422) && !is_flood_guard(&e) => {
                self.note(|| format!("reply {reply}: {}", e.detail()));
                let validation = matches!(&e, SendError::Permanent { .. });
                if self.old == Some(OldRule::ValidationFailedIsDead) && validation {
                    let outcome = self.failed(inst, &job, e, Step::Create);
                    return self.record(inst, fid, outcome);
                }
                self.start_look(inst, fid, Purpose::After422(e));
            }
            Err(e) => {
                self.note(|| format!("reply {reply}: {}", e.detail()));
                let outcome = self.failed(inst, &job, e, Step::Create);
                self.record(inst, fid, outcome);
            }
        }
    }

    /// `Worker::failed`: the pause the error calls for, then goldrelay's own
    /// `after_failure`.
    fn failed(&mut self, inst: usize, job: &Job, error: SendError, step: Step) -> Outcome {
        self.note_refusal(inst, &error);
        let policy = self.p.policy(1);
        let now = self.now_of(inst);
        let paused = self
            .pause_left(inst)
            .map(|ms| std::time::Duration::from_millis(ms as u64));
        let jitter = self.rng.random::<f64>();
        after_failure(job, error, step, paused, &policy, at(now), jitter)
    }

    /// `Worker::note_refusal`: a 429 or a refused token pauses every request.
    fn note_refusal(&mut self, inst: usize, error: &SendError) {
        let wait = match error {
            SendError::Transient {
                status: Some(429),
                retry_after,
                ..
            } => {
                let unix = secs(self.now_of(inst)).rem_euclid(RACK_ATTACK_WINDOW);
                let window_left = (RACK_ATTACK_WINDOW - unix) * 1000;
                let wait = retry_after.map_or(window_left, ms_of).min(self.p.retry_max);
                let until = self.now_of(inst) + wait;
                self.store.pause_sends(until);
                wait
            }
            SendError::TokenRefused { .. } => ms_of(TOKEN_RECHECK).min(self.p.retry_max),
            _ => return,
        };
        let i = &mut self.insts[inst];
        let until = self.t + wait;
        i.pause_until = Some(i.pause_until.map_or(until, |u| u.max(until)));
    }

    fn went_through(&mut self, inst: usize) {
        self.insts[inst].pause_until = None;
    }

    // ---- The lookup (`find_reply`) --------------------------------------

    fn start_look(&mut self, inst: usize, fid: u64, purpose: Purpose) {
        let reply = self.flight(inst, fid).reply;
        let row = &self.store.replies[reply];
        let floor = self.store.message_floor(row.conv, row.accepted_at);
        let horizon = secs(row.accepted_at) - 300;
        self.flight(inst, fid).look = Some(Look {
            purpose,
            lo: floor,
            hi: 0,
            requests: 1,
            before: None,
            horizon,
        });
        self.pace(inst, fid, None, Then::LookStart);
    }

    /// The outer loop's head: the next `after=lo` page, or the old lookup's
    /// next `before=` page.
    fn outer(&mut self, inst: usize, fid: u64) {
        let requests = self
            .flight(inst, fid)
            .look
            .as_ref()
            .expect("a lookup")
            .requests;
        if requests >= chatwoot::MAX_LOOKUP_PAGES {
            let why = "the lookup made too many requests".to_owned();
            return self.look_done(inst, fid, Ok(Lookup::Uncertain(why)));
        }
        let then = if self.old == Some(OldRule::LookupBySmallestId) {
            Then::BeforePage
        } else {
            Then::AfterPage
        };
        self.pace(inst, fid, None, then);
    }

    fn range(&mut self, inst: usize, fid: u64) {
        let requests = self
            .flight(inst, fid)
            .look
            .as_ref()
            .expect("a lookup")
            .requests;
        if requests >= chatwoot::MAX_LOOKUP_PAGES {
            return self.outer(inst, fid);
        }
        self.pace(inst, fid, None, Then::RangePage);
    }

    /// The id of our message on `page`: outgoing, from goldrelay's user, with
    /// the approved content (`is_ours`); under the old rule, any marker.
    fn sift(&self, page: &[Msg], reply: usize) -> Option<i64> {
        let content = &self.store.replies[reply].content;
        page.iter()
            .filter(|m| m.marker == Some(reply))
            .find(|m| {
                self.old == Some(OldRule::MarkerOnlyMatch)
                    || (m.outgoing()
                        && m.sender_id() == Some(chatwoot::RELAY_USER)
                        && &m.content == content)
            })
            .map(|m| m.id)
    }

    fn page_read(&mut self, inst: usize, fid: u64, result: Result<Vec<Msg>, SendError>) {
        let page = match result {
            Ok(page) => page,
            Err(e) => return self.look_done(inst, fid, Err(e)),
        };
        let reply = self.flight(inst, fid).reply;
        let found = self.sift(&page, reply);
        if self.old == Some(OldRule::LookupBySmallestId) {
            if let Some(id) = found {
                return self.look_done(inst, fid, Ok(Lookup::Found(id)));
            }
            let look = self.flight(inst, fid).look.as_mut().expect("a lookup");
            let Some(oldest) = page.iter().min_by_key(|m| m.id) else {
                return self.look_done(inst, fid, Ok(Lookup::Absent));
            };
            if page.len() < chatwoot::BEFORE_PAGE || oldest.created_at < look.horizon {
                return self.look_done(inst, fid, Ok(Lookup::Absent));
            }
            look.before = Some(oldest.id);
            return self.outer(inst, fid);
        }
        let look = self.flight(inst, fid).look.as_mut().expect("a lookup");
        let in_range = look.hi != 0;
        if !in_range {
            if let Some(id) = found {
                return self.look_done(inst, fid, Ok(Lookup::Found(id)));
            }
            let Some(top) = page.iter().map(|m| m.id).max() else {
                return self.look_done(inst, fid, Ok(Lookup::Absent));
            };
            if page.len() < chatwoot::AFTER_PAGE {
                return self.look_done(inst, fid, Ok(Lookup::Absent));
            }
            look.hi = top + 1;
            return self.range(inst, fid);
        }
        if page.len() < chatwoot::RANGE_PAGE {
            if let Some(id) = found {
                return self.look_done(inst, fid, Ok(Lookup::Found(id)));
            }
            look.lo = look.hi - 1;
            look.hi = 0;
            return self.outer(inst, fid);
        }
        let half = look.lo + 1 + (look.hi - look.lo - 1) / 2;
        if half <= look.lo + 1 {
            let why = "too many messages share one id".to_owned();
            return self.look_done(inst, fid, Ok(Lookup::Uncertain(why)));
        }
        look.hi = half;
        self.range(inst, fid);
    }

    /// `check_earlier` / `after_unprocessable`, given what the lookup found.
    fn look_done(&mut self, inst: usize, fid: u64, result: Result<Lookup, SendError>) {
        let f = self.flight(inst, fid);
        let (reply, job) = (f.reply, f.job.clone());
        let purpose = f.look.take().expect("a lookup").purpose;
        self.note(|| format!("reply {reply}: lookup {result:?}"));
        match &result {
            Ok(_) => self.went_through(inst),
            Err(e) => self.note_refusal(inst, e),
        }
        let outcome = match (purpose, result) {
            (_, Ok(Lookup::Found(message_id))) => Outcome::Delivered { message_id },
            (Purpose::Earlier, Ok(Lookup::Absent)) => return self.begin_create(inst, fid),
            (Purpose::Earlier, Ok(Lookup::Uncertain(detail))) => {
                let unsure = transient(None, true, detail);
                self.failed(inst, &job, unsure, Step::Lookup)
            }
            (Purpose::Earlier, Err(e @ SendError::Permanent { .. })) => Outcome::Dead {
                error: format!("delivery uncertain: checking failed ({})", e.detail()),
                maybe_sent: true,
            },
            (Purpose::Earlier, Err(e)) => self.failed(inst, &job, e, Step::Lookup),
            (Purpose::After422(error), Ok(Lookup::Absent)) => {
                let refused = error.proven_not_created();
                let job = Job {
                    maybe_sent: false,
                    ..job
                };
                self.failed(inst, &job, refused, Step::Create)
            }
            (Purpose::After422(error), Ok(Lookup::Uncertain(detail))) => {
                let detail = format!("{}; then {detail}", error.detail());
                let unsure = transient(Some(422), true, detail);
                self.failed(inst, &job, unsure, Step::Lookup)
            }
            (Purpose::After422(_), Err(e)) => self.failed(inst, &job, e, Step::Lookup),
        };
        self.record(inst, fid, outcome);
    }

    // ---- The end of an attempt (`outcome_of`, `deliver`) -----------------

    /// The attempt outlived its deadline (`cut_off`).
    fn cut_off(&mut self, inst: usize, fid: u64) {
        if matches!(self.flight(inst, fid).stage, Stage::Recording { .. }) {
            return;
        }
        let f = self.flight(inst, fid);
        f.gen += 1;
        f.look = None;
        let (reply, job, sent) = (f.reply, f.job.clone(), f.sent_at.is_some());
        self.note(|| format!("reply {reply}: the attempt is cut off at its deadline"));
        let detail = "the attempt took longer than its lease".to_owned();
        let now = self.now_of(inst);
        let outcome = if sent {
            let failed = transient(None, true, detail);
            let jitter = self.rng.random::<f64>();
            retry_or_give_up(
                &job,
                failed,
                Step::Create,
                &self.p.policy(1),
                at(now),
                jitter,
            )
        } else {
            self.nothing_sent(inst, fid, now, detail)
        };
        self.record(inst, fid, outcome);
    }

    fn record(&mut self, inst: usize, fid: u64, outcome: Outcome) {
        let now = self.now_of(inst);
        let f = self.flight(inst, fid);
        f.gen += 1;
        f.stage = Stage::Recording {
            outcome,
            tries_left: RECORD_TRIES - 1,
            delay: STORE_RETRY,
            now,
        };
        self.try_record(inst, fid);
    }

    fn try_record(&mut self, inst: usize, fid: u64) {
        let fails = self.store_fails();
        let f = self.flight(inst, fid);
        let reply = f.reply;
        let Stage::Recording {
            outcome,
            tries_left,
            delay,
            now,
        } = &mut f.stage
        else {
            return;
        };
        if fails {
            if *tries_left == 0 {
                self.note(|| format!("reply {reply}: the outcome could not be recorded"));
                self.doubts[reply].outcome_lost = true;
                return self.flight_over(inst, fid);
            }
            *tries_left -= 1;
            let wait = *delay;
            *delay *= 2;
            let inc = self.insts[inst].inc;
            return self.push(self.t + wait, Ev::Record { inst, inc, fid });
        }
        let (outcome, now) = (outcome.clone(), *now);
        let owner = self.insts[inst].owner.clone();
        let summary = brief(&outcome);
        let applied = self.store.finish(reply, &owner, outcome, now);
        self.note(|| format!("reply {reply}: recorded {summary} (applied: {applied})"));
        if !applied {
            self.doubts[reply].outcome_lost = true;
        }
        self.mark_dead();
        self.flight_over(inst, fid);
    }

    fn flight_over(&mut self, inst: usize, fid: u64) {
        self.insts[inst].flights.remove(&fid);
        match self.insts[inst].run {
            Run::Up => self.poll_soon(inst, self.t),
            Run::Draining if self.insts[inst].flights.is_empty() => self.exit(inst),
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Ok,
    Lost,
    Gateway5xxAfter,
    Error5xxBefore,
    Redis422,
    Enterprise422,
    Flood422,
    Throttled,
    ProxyHtml,
    TokenRefused,
    Refused,
    Dropped,
    Invalid,
}

/// The faults a create may meet while they last.
const KINDS: [Kind; 11] = [
    Kind::Lost,
    Kind::Gateway5xxAfter,
    Kind::Error5xxBefore,
    Kind::Redis422,
    Kind::Enterprise422,
    Kind::Flood422,
    Kind::Throttled,
    Kind::ProxyHtml,
    Kind::Refused,
    Kind::Dropped,
    Kind::Lost,
];

impl Kind {
    /// Whether Chatwoot stores the message (whatever it answers).
    fn commits(self) -> bool {
        matches!(
            self,
            Kind::Ok | Kind::Lost | Kind::Gateway5xxAfter | Kind::Redis422 | Kind::Enterprise422
        )
    }
}

/// An HTTP error answer, classified by goldrelay's own `classify`.
fn http(status: u16, body: &str, retry_after: Option<u64>) -> SendError {
    let mut headers = HeaderMap::new();
    if let Some(secs) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    let status = StatusCode::from_u16(status).expect("a valid status");
    classify(status, &headers, body)
}

/// A request that failed below HTTP (`Call::transport_error`).
fn transport(maybe_created: bool, detail: &str) -> SendError {
    transient(None, maybe_created, detail.to_owned())
}

fn transient(status: Option<u16>, maybe_created: bool, detail: String) -> SendError {
    SendError::Transient {
        status,
        retry_after: None,
        maybe_created,
        detail,
    }
}

/// `is_flood_guard` in `delivery/mod.rs`.
fn is_flood_guard(error: &SendError) -> bool {
    matches!(
        error,
        SendError::Transient {
            status: Some(422),
            maybe_created: false,
            ..
        }
    )
}

fn brief(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Delivered { message_id } => format!("delivered as {message_id}"),
        Outcome::Retry { at, maybe_sent, .. } => {
            format!("retry at {} (maybe sent: {maybe_sent})", ms(*at))
        }
        Outcome::Unsent { at, maybe_sent, .. } => {
            format!("unsent, due at {} (maybe sent: {maybe_sent})", ms(*at))
        }
        Outcome::Dead { error, maybe_sent } => {
            format!("dead (maybe sent: {maybe_sent}): {error}")
        }
    }
}
