//! One module per command: each turns its arguments into engine calls and prints the result.

pub mod backfill;
pub mod demo;
pub mod generate;
pub mod ledger;
pub mod live;
pub mod optimize;
pub mod reconcile;
pub mod serve;
pub mod shell;
pub mod sql;
pub mod tables;
pub mod trace;
pub mod vacuum;
pub mod worker;
