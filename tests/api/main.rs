//! Every integration test of goldrelay, in one binary: the HTTP API and
//! delivery over real HTTP (each test with its own temporary database and
//! sandbox Chatwoot), the store conformance suite, the real `goldrelay serve`
//! process killed and restarted, the operator's surface, the Chatwoot
//! webhooks, fly.toml and the image held to the code, and the migrations.
//!
//! PostgreSQL-only tests are `#[ignore]`d: run them with `TEST_DATABASE_URL`
//! set and `--include-ignored`; `postgres_outage` stops the server, so it runs
//! on its own (see its module).

mod architecture;
mod auth;
mod backup;
mod chaos;
mod conformance;
mod console;
mod console_judgement;
mod console_rate;
mod context;
mod dashboard;
mod dataset;
mod delivery;
mod dev;
mod exactly_once;
mod export;
mod fly_toml;
mod helpers;
mod hostile;
mod idempotency;
mod ingest;
mod liquid;
mod memory;
mod migrations;
mod operations;
mod ordering;
mod pitfalls;
mod postgres_instances;
mod postgres_outage;
mod properties;
mod read_only;
mod restart;
mod roles;
mod sandbox;
mod send_pace;
mod store_faults;
mod token_rate;
mod traces;
mod validation;
mod webhooks;
