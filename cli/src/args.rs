//! The command line: every command, flag and default, as clap derive types.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// tally: a lakehouse query and batch engine for payment events.
///
/// One immutable raw lake; a daily exact ledger for finance, a seconds-fresh live view for
/// operations, ad-hoc SQL for analysts.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The memory limit the command was given, if it takes one.
    pub fn memory_limit(&self) -> Option<usize> {
        match &self.command {
            Command::Sql(a) => a.memory_limit,
            Command::Ledger(a) => a.plan.memory_limit,
            Command::Backfill(a) => a.plan.memory_limit,
            Command::Serve(a) => a.memory_limit,
            Command::Worker(a) => a.memory_limit,
            _ => None,
        }
    }
}

/// Options every command accepts, before or after the subcommand.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Lake root: a local directory or s3://bucket/prefix [default: ./lake]
    #[arg(long, global = true, env = "TALLY_LAKE")]
    pub lake: Option<String>,
    /// Config file [default: ./tally.toml if present]
    #[arg(long, global = true, env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run SQL over every registered table and print the result.
    Sql(SqlArgs),
    /// Interactive SQL: history, multi-line statements ending in `;`, `\d` to list tables.
    Shell(ShellArgs),
    /// List the registered tables.
    Tables,
    /// Write a realistic, deterministic raw lake (for demos, tests and benchmarks).
    Generate(GenerateArgs),
    /// Build one event day's ledger: every transaction once, replaced in one Delta commit.
    Ledger(LedgerArgs),
    /// Build the ledger for every day of a range; resumable, skips unchanged days.
    Backfill(BackfillArgs),
    /// Follow the raw lake in micro-batches into live_view (per minute and partner).
    Live(LiveArgs),
    /// Compare one day's ledger with the live view, per partner (exit 3 on drift).
    Reconcile(ReconcileArgs),
    /// Every raw copy of a transaction, which one won and why, and where the ledger holds it.
    Trace(TraceArgs),
    /// Make a sample lake with realistic traffic and show what tally does with it.
    Demo(DemoArgs),
    /// Serve the lake read-only to BI tools (Arrow Flight SQL, Postgres wire) and monitoring (HTTP).
    Serve(ServeArgs),
    /// Run plan stages for `--workers` callers (ledger, backfill, sql) on this machine.
    Worker(WorkerArgs),
    /// Delete files of tally's tables no version within the retention needs (never raw/).
    Vacuum(VacuumArgs),
    /// Rewrite one ledger day's files as fewer, sorted ones: same rows, same fingerprint.
    Optimize(OptimizeArgs),
}

#[derive(Debug, Args)]
pub struct OptimizeArgs {
    /// The ledger day (event date, UTC), YYYY-MM-DD.
    #[arg(long)]
    pub date: String,
    /// Memory for the day's sort, e.g. 1GiB: it spills to disk beyond it.
    #[arg(long, value_parser = parse_bytes)]
    pub memory_limit: Option<usize>,
    /// A line for people, or one JSON object.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SummaryFormat,
}

#[derive(Debug, Args)]
pub struct VacuumArgs {
    /// Only this table (ledger, ledger_conflicts, live_view, live_late, live_quarantine,
    /// reconciliations, runs, alerts); repeat for several [default: all of them]
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// Versions newer than this stay readable with every file they use, e.g. 7d or 12h.
    #[arg(long, default_value = "7d")]
    pub retain: humantime::Duration,
    /// List what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A table for people, or one JSON object.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SummaryFormat,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTP endpoint (health, metrics), HOST:PORT or off; port 0 picks a free port.
    #[arg(long, default_value = tally_engine::serve::DEFAULT_HTTP)]
    pub http: String,
    /// Arrow Flight SQL endpoint (ADBC, JDBC), HOST:PORT or off.
    #[arg(long, default_value = tally_engine::serve::DEFAULT_FLIGHT_SQL)]
    pub flight_sql: String,
    /// Postgres wire endpoint (psql, psycopg, Grafana, Metabase), HOST:PORT or off.
    #[arg(long, default_value = tally_engine::serve::DEFAULT_PG)]
    pub pg: String,
    /// Memory for all running queries together, e.g. 2GiB; operators spill beyond it
    /// [default: a quarter of this machine's memory]
    #[arg(long, value_parser = parse_bytes)]
    pub memory_limit: Option<usize>,
    /// A query running longer is stopped, e.g. 30s or 5m (time queued counts).
    #[arg(long, default_value = "300s")]
    pub query_timeout: humantime::Duration,
    /// Queries running at once; more wait in a queue within --query-timeout [default: 2 per core]
    #[arg(long)]
    pub max_concurrent_queries: Option<usize>,
    /// Open Postgres connections; more are refused (SQLSTATE 53300).
    #[arg(long, default_value_t = tally_engine::serve::admission::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// PEM certificate chain: every endpoint serves TLS (Postgres by SSLRequest).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Allow a non-loopback address without TLS (the token then crosses the network in clear).
    #[arg(long)]
    pub insecure: bool,
    /// Memory for answers of repeated queries, kept while their Delta tables are unchanged
    /// (a commit makes the next query run again), e.g. 64MiB; 0 turns it off [default: 64MiB]
    #[arg(long, value_parser = parse_bytes, default_value = "64MiB")]
    pub result_cache: usize,
    /// Also run the live micro-batch loop (`tally live`, with its options below) in this process.
    #[arg(long)]
    pub live: bool,
    #[command(flatten)]
    pub live_args: LiveArgs,
}

/// How a ledger day's plan runs (shared by `ledger` and `backfill`).
#[derive(Debug, Args)]
pub struct LedgerPlanArgs {
    /// Days after the event day whose arrivals still count [default: 3, or tally.toml]
    #[arg(long)]
    pub late_days: Option<u32>,
    /// Hash buckets of txn_id the work is split into [default: 16, or tally.toml]
    #[arg(long)]
    pub buckets: Option<u32>,
    /// Passes over the day's transactions, each a range of txn_id hashes deduplicated in
    /// memory [default: one per 16M raw rows; under --memory-limit one per 4M, or more if
    /// it needs them]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub passes: Option<u32>,
    /// Memory limit per day, e.g. 1GiB: the dedup spills to disk beyond it.
    #[arg(long, value_parser = parse_bytes)]
    pub memory_limit: Option<usize>,
    /// Commit a day even when no raw file was found for it (by default the run refuses, so
    /// expired raw partitions or a wrong --lake cannot wipe a committed day).
    #[arg(long)]
    pub allow_empty: bool,
    /// Largest loss of rows a rebuild may make against the committed day, e.g. 5% or 0.05
    /// (refused beyond it; 100% allows any).
    #[arg(long, value_parser = tally_engine::ledger::guard::parse_fraction, default_value = "1%")]
    pub max_shrink: f64,
}

impl LedgerPlanArgs {
    /// The refusal rules these flags set.
    pub fn guard(&self) -> tally_engine::ledger::Guard {
        tally_engine::ledger::Guard {
            allow_empty: self.allow_empty,
            max_shrink: self.max_shrink,
        }
    }
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// First event day (YYYY-MM-DD).
    #[arg(long)]
    pub from: String,
    /// Last event day, inclusive (YYYY-MM-DD).
    #[arg(long)]
    pub to: String,
    /// Days built at once.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    #[command(flatten)]
    pub plan: LedgerPlanArgs,
    /// Per-day lines: a progress bar on a terminal, JSON lines otherwise (auto), or force one.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
}

/// How a long job shows progress.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar on a terminal, JSON lines otherwise.
    Auto,
    /// An indicatif bar on stderr.
    Bar,
    /// One JSON object per finished day on stdout.
    Json,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The event day (UTC), YYYY-MM-DD.
    #[arg(long)]
    pub date: String,
    /// Largest acceptable unexplained drift, relative to the ledger [default: 0.001]
    #[arg(long)]
    pub threshold: Option<f64>,
    /// A table for people, or one JSON object.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SummaryFormat,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The transaction id.
    #[arg(long)]
    pub txn: String,
    /// Arrival window searched after the ledger day [default: 3, or tally.toml]
    #[arg(long)]
    pub late_days: Option<u32>,
    /// Lines for people, or one JSON object.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SummaryFormat,
}

#[derive(Debug, Args)]
pub struct LiveArgs {
    /// Time between micro-batches, e.g. 1s or 500ms [default: 1s, or tally.toml]
    #[arg(long)]
    pub interval: Option<humantime::Duration>,
    /// Process the files that are there, then exit (exit 1 if any file was quarantined).
    #[arg(long)]
    pub once: bool,
    /// How long a txn_id is remembered for dedup, in event time [default: 10m]
    #[arg(long)]
    pub dedup_ttl: Option<humantime::Duration>,
    /// How far behind the newest event_time an event still counts as on time [default: 2m]
    #[arg(long)]
    pub grace: Option<humantime::Duration>,
    /// Windows older than this behind the newest event_time are dropped [default: 48h]
    #[arg(long)]
    pub retention: Option<humantime::Duration>,
    /// Most raw files one batch reads [default: 256]
    #[arg(long)]
    pub max_files_per_batch: Option<usize>,
    /// Roll the tables up (and checkpoint/vacuum the Delta log) every N batches [default: 60]
    #[arg(long)]
    pub compact_every: Option<u64>,
    /// On the first start, follow ingest_date partitions from N days before the newest [default: 2]
    #[arg(long)]
    pub start_lookback_days: Option<u64>,
    /// One line per batch for people, or one JSON object per line.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SummaryFormat,
    /// Serve Prometheus /metrics (and /health) on HOST:PORT (port 0 picks one; `tally serve
    /// --live` serves them on its --http address instead)
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// POST alerts as JSON to this URL when a partner's error rate in a minute reaches
    /// --alert-error-rate [default: tally.toml's [alerts] webhook]
    #[arg(long, value_name = "URL")]
    pub alert_webhook: Option<String>,
    /// The error rate (0..1] of one minute of one partner that fires an alert, e.g. 0.05
    #[arg(long, value_name = "RATE")]
    pub alert_error_rate: Option<f64>,
    /// Fewest events a minute needs to fire or resolve an alert [default: 20]
    #[arg(long, value_name = "N")]
    pub alert_min_events: Option<u64>,
}

#[derive(Debug, Args)]
pub struct LedgerArgs {
    /// The event day (UTC), YYYY-MM-DD.
    #[arg(long)]
    pub date: String,
    #[command(flatten)]
    pub plan: LedgerPlanArgs,
    /// Print the plan instead of running it.
    #[arg(long)]
    pub explain: bool,
    /// Output format of the run summary.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SummaryFormat,
}

/// How a job prints its summary.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SummaryFormat {
    /// Lines for people.
    Table,
    /// One JSON object.
    Json,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Event days in the sample lake.
    #[arg(long, default_value_t = 3)]
    pub days: u32,
    /// Transactions per day in the sample lake.
    #[arg(long, default_value_t = 200_000)]
    pub events_per_day: u64,
    /// Write a fresh sample lake even if one is there.
    #[arg(long)]
    pub regenerate: bool,
}

/// How query results are printed.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned text table (for people).
    Table,
    /// CSV with a header, streamed.
    Csv,
    /// A JSON array of objects, streamed.
    Json,
    /// One JSON object per line, streamed.
    Ndjson,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The SQL text; several statements separated by `;` run in order.
    pub query: String,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Allow DDL, DML, COPY and SET (raw data stays read-only).
    #[arg(long)]
    pub allow_write: bool,
    /// Most rows the table format prints (csv/json print all).
    #[arg(long, default_value_t = 1000)]
    pub max_rows: usize,
    /// Memory limit for the query, e.g. 2GiB; operators spill beyond it.
    #[arg(long, value_parser = parse_bytes)]
    pub memory_limit: Option<usize>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Where a command's plans run: on this machine, or on `tally worker` processes.
#[derive(Debug, Args, Clone, Default)]
pub struct ClusterArgs {
    /// Run the plan's stages on these workers, HOST:PORT[,HOST:PORT…] (each a `tally worker`
    /// that reaches the same lake) [default: `[cluster] workers` of tally.toml]
    #[arg(long, env = "TALLY_WORKERS", value_delimiter = ',')]
    pub workers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Where to accept work, HOST:PORT (port 0 picks a free one; printed as `listening worker`).
    /// Without TALLY_TOKEN only a loopback address is allowed.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub bind: String,
    /// Serve Prometheus /metrics (and /health) on HOST:PORT.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Memory limit for the tasks this worker runs, e.g. 4GiB; operators spill beyond it.
    #[arg(long, value_parser = parse_bytes)]
    pub memory_limit: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Allow DDL, DML, COPY and SET (raw data stays read-only).
    #[arg(long)]
    pub allow_write: bool,
    /// Most rows printed per query.
    #[arg(long, default_value_t = 40)]
    pub max_rows: usize,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of event days.
    #[arg(long, default_value_t = 3)]
    pub days: u32,
    /// Distinct transactions per event day.
    #[arg(long, default_value_t = 100_000)]
    pub events_per_day: u64,
    /// RNG seed; the same seed writes the same rows.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// First event day (YYYY-MM-DD).
    #[arg(long, default_value = "2026-11-01")]
    pub start: String,
    /// Uniform partner volume instead of the default Zipf skew.
    #[arg(long)]
    pub skew_free: bool,
    /// Number of partners.
    #[arg(long, default_value_t = 300)]
    pub partners: u32,
    /// The replaying partner had a 10:00-14:00 outage on the replayed day: those events
    /// arrive only with the late replay.
    #[arg(long)]
    pub outage: bool,
}

/// Parses a byte size like `512MiB`, `1GiB`, `2G` or a plain number of bytes.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad size {s:?}: expected e.g. 512MiB or 2GiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("bad size unit {other:?} in {s:?}")),
    };
    Ok((n * mult) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
