//! Lake upkeep: compacting ledger days and collecting what tally's own tables no longer need.
//!
//! Every rerun of a ledger day replaces its files, every killed run leaves files it never
//! committed, and the live roll-up rewrites its window: without collection the lake grows for
//! ever. Nothing here ever touches `raw/`: raw data is never modified.

pub mod optimize;
pub mod vacuum;

pub use optimize::{optimize, OptimizeReport};
pub use vacuum::{vacuum, VacuumOptions, VacuumReport};
