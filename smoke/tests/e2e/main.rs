//! The real `smoke` binary against a real goldrelay and the sandbox Chatwoot,
//! each test with its own database, ports and sandbox.

mod helpers;
mod pitfalls;
mod reports;
mod runs;
mod secrets;
mod usage;
