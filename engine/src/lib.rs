//! tally's engine: the lake, sessions over it, and the jobs that run on them.
//!
//! Module map:
//! - [`config`]: `tally.toml` (lake location, S3 options, extra tables, job settings);
//! - [`day`]: parsing the calendar days jobs take;
//! - [`lake`]: the lake root, its object store and table layout;
//! - [`schema`]: every table schema, defined once;
//! - [`session`]: the one place a DataFusion session is built (object store, UDFs, tables);
//! - [`raw_files`]: checking raw Parquet files from their footers;
//! - [`raw_table`]: `raw_payments`, pruned by arrival day from event-time filters;
//! - [`delta`]: opening the lake's Delta tables with the lake's storage settings;
//! - [`delta_files`]: a Delta snapshot read as plain Parquet files (the server's fast path);
//! - [`delta_stats`]: per-file column statistics for Delta `add` actions;
//! - [`failpoint`]: named crash points between durable steps, for tests;
//! - `flaky_store`: a lake store that fails every n-th request for a while, for tests (dev builds);
//! - [`query`]: ad-hoc SQL with the read-only guard;
//! - [`plan`]: tally's own physical operators for analysts' queries and the rule placing them;
//! - [`ledger`]: the daily finance ledger (exact dedup, one atomic Delta commit per day);
//! - [`live`]: the incremental micro-batch live view (dedup within a TTL, watermark, exactly once);
//! - [`backfill`]: ledger days as tasks (lease, skip unchanged days, record in `runs`);
//! - [`day_lock`]: the per-day lease that keeps two runs off one day;
//! - [`runs`]: the `runs` table, the ledger's run log;
//! - [`reconcile`]: the ledger against the live view, per partner, with a verdict;
//! - [`trace`]: every copy of one transaction and why the winner won;
//! - [`ops`]: the live loop's Prometheus series and per-partner error-rate alerts;
//! - [`serve`]: `tally serve`, the lake read-only over Flight SQL, the Postgres wire and HTTP;
//! - [`jobs_sql`]: the jobs' SQL texts from `sql/`;
//! - [`generate`]: the realistic raw-lake generator;
//! - [`progress`]: how long jobs report progress;
//! - [`error`]: the typed error with its user / external / internal kind.
//!
//! arrow, datafusion and deltalake are re-exported so the CLI and tests never pin their own.

pub mod backfill;
pub mod cluster;
pub mod config;
pub mod day;
pub mod day_lock;
pub mod delta;
pub mod delta_files;
pub mod delta_stats;
pub mod error;
pub mod failpoint;
#[cfg(debug_assertions)]
pub mod flaky_store;
pub mod generate;
pub mod jobs_sql;
pub mod lake;
pub mod ledger;
pub mod live;
pub mod ops;
pub mod plan;
pub mod progress;
pub mod query;
pub mod raw_delta;
pub mod raw_files;
pub mod raw_guard;
pub mod raw_table;
pub mod reconcile;
pub mod runs;
pub mod schema;
pub mod serve;
pub mod session;
pub mod trace;
pub mod unreadable;
pub mod upkeep;

pub use arrow;
pub use datafusion;
pub use deltalake;
pub use error::{ErrorKind, Result, TallyError};
pub use object_store;
pub use parquet;
pub use tally_udfs as udfs;
