//! Black-box tests of the goldrelay HTTP API and delivery, over real HTTP.

mod helpers;
mod ingest;
