//! The jobs' SQL, embedded from `sql/*.sql` so the binary carries exactly the text reviewed in
//! the repository, and named here in one place. Values are bound as `$n` parameters, never
//! spliced into the text.

/// Day D's ledger: arrivals, per-transaction collapse, agreement check (`sql/ledger.sql`).
pub const LEDGER: &str = include_str!("../../sql/ledger.sql");

/// Day D's copies with their transaction keys, split into passes (`sql/ledger_scatter.sql`).
pub const LEDGER_SCATTER: &str = include_str!("../../sql/ledger_scatter.sql");

/// Copies of day D's transactions that name a neighbouring day (`sql/ledger_neighbours.sql`).
pub const LEDGER_NEIGHBOURS: &str = include_str!("../../sql/ledger_neighbours.sql");

/// Settles disputed transactions and those spanning days (`sql/ledger_settle.sql`).
pub const LEDGER_SETTLE: &str = include_str!("../../sql/ledger_settle.sql");

/// The days around D that settled a shared transaction otherwise (`sql/ledger_stale_days.sql`).
pub const LEDGER_STALE_DAYS: &str = include_str!("../../sql/ledger_stale_days.sql");

/// A short, stable hash of SQL texts, recorded in commits so a re-run can prove it ran the
/// same logic.
pub fn sql_hash(texts: &[&str]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for t in texts {
        h.update(t.as_bytes());
        h.update(&[0]);
    }
    format!("{:016x}", h.digest())
}

/// One micro-batch's per-minute, per-partner totals (`sql/live_window.sql`).
pub const LIVE_WINDOW: &str = include_str!("../../sql/live_window.sql");

/// Day D's ledger against the live view, per partner (`sql/reconcile.sql`).
pub const RECONCILE: &str = include_str!("../../sql/reconcile.sql");
/// The live mode's quarantined files that landed on a reconciled day or the next.
pub const RECONCILE_QUARANTINE: &str = include_str!("../../sql/reconcile_quarantine.sql");

/// One ledger day's rows in file order, for `tally optimize` (`sql/optimize_day.sql`).
pub const OPTIMIZE_DAY: &str = include_str!("../../sql/optimize_day.sql");
/// The fingerprint the day's newest ledger run committed (`sql/optimize_expected.sql`).
pub const OPTIMIZE_EXPECTED: &str = include_str!("../../sql/optimize_expected.sql");
