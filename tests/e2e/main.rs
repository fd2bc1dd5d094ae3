//! End-to-end tests: the real `tally` binary on real lakes (local disk and a real S3-compatible
//! server on loopback). Expected values are computed here, independently, by reading the raw
//! Parquet files with the `parquet` crate and folding them in plain Rust collections.

// Test helpers panic on failure by design: a panic is a failed test.
#![allow(clippy::unwrap_used)]

mod harness;

mod backfill;
mod cli;
mod cluster;
mod generate;
mod lease_race;
mod ledger;
mod ledger_faults;
mod live;
mod ops;
mod reconcile;
mod s3;
mod serve;
mod sql;
mod trace;
mod upkeep;
