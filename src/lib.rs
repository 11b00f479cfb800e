//! goldrelay: takes human-approved gold replies from Support, stores them
//! durably, and delivers the approved ones to Chatwoot exactly once, in order
//! per conversation.

pub mod chatwoot;
pub mod config;
pub mod dataset;
pub mod delivery;
pub mod dev;
pub mod domain;
pub mod health;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod ops;
pub mod sandbox;
pub mod startup;
pub mod store;
pub mod telemetry;
