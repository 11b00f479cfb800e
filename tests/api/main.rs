//! Black-box tests of the goldrelay HTTP API and delivery, over real HTTP,
//! each against its own temporary database and sandbox Chatwoot.

mod auth;
mod delivery;
mod helpers;
mod idempotency;
mod ingest;
mod ordering;
mod restart;
mod validation;
