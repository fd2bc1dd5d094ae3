//! `tally ledger --date D`: build one day's ledger and print what the commit holds.

use crate::args::{LedgerArgs, SummaryFormat};
use crate::context::Context;
use crate::progress_bar::Bar;
use anyhow::Result;
use tally_engine::ledger::{LedgerJob, LedgerMetrics};
use tally_engine::session::SessionOptions;

pub async fn run(ctx: &Context, args: &LedgerArgs) -> Result<()> {
    let buckets = args.plan.buckets.unwrap_or(ctx.config.ledger.buckets);
    let late_days = args.plan.late_days.unwrap_or(ctx.config.ledger.late_days);
    let opts = SessionOptions::for_ledger(args.plan.memory_limit, buckets);
    let day = tally_engine::day::parse(&args.date)?;
    let session = ctx.session(&opts).await?;
    let bar = Bar::new();
    let job = LedgerJob::new(&session, day)
        .with_late_days(late_days)
        .with_buckets(buckets)
        .with_passes(args.plan.passes.map(|p| p as usize))
        .with_guard(args.plan.guard())
        .with_progress(&bar);
    if args.explain {
        println!("{}", job.explain().await?);
        return Ok(());
    }
    let m = tally_engine::backfill::ledger_day(&session, &ctx.config, day, job).await?;
    bar.finish();
    print_summary(&m, args.format);
    Ok(())
}

/// What a built day says about the days around it, one line each: the neighbouring days to
/// rebuild and the transactions beyond the ledger's bound (shared with backfill).
pub fn warnings(m: &LedgerMetrics) -> Vec<String> {
    let mut lines: Vec<String> = m
        .stale_days
        .iter()
        .map(|s| {
            format!(
                "warning: the ledger of {} settles {} transaction(s) shared with {} otherwise than {}'s committed ledger: rebuild it (tally ledger --date {}, or a backfill over it)",
                m.day, s.transactions, s.day, s.day, s.day
            )
        })
        .collect();
    if m.beyond_bound > 0 {
        lines.push(format!(
            "warning: {} transaction(s) of {} have copies naming days more than 2 days apart: settled on the copies this run sees, listed in ledger_conflicts with reason spread_beyond_bound",
            m.beyond_bound, m.day
        ));
    }
    lines
}

/// Prints a run's figures (shared with backfill).
pub fn print_summary(m: &LedgerMetrics, format: SummaryFormat) {
    for line in warnings(m) {
        eprintln!("{line}");
    }
    match format {
        SummaryFormat::Json => println!(
            "{}",
            serde_json::json!({
                "day": m.day.to_string(),
                "version": m.version,
                "files_read": m.files_read,
                "rows_read": m.rows_read,
                "rows_without_event_time": m.rows_without_event_time,
                "ledger_rows": m.ledger_rows,
                "ceded": m.ceded,
                "spread_beyond_bound": m.beyond_bound,
                "days_to_rebuild": days_to_rebuild(m),
                "conflicts_version": m.conflicts_version,
                "disputed": m.disputed,
                "conflict_rows": m.conflict_rows,
                "disputes_spilled": m.disputes_spilled,
                "passes": m.passes,
                "fingerprint": m.fingerprint.to_json(),
                "added_files": m.added_files,
                "removed_files": m.removed_files,
                "seconds": m.elapsed.as_secs_f64(),
            })
        ),
        SummaryFormat::Table => {
            println!(
                "ledger {}: {} transactions, amount {}, from {} raw rows in {} files",
                m.day,
                m.ledger_rows,
                m.fingerprint.amount_text(),
                m.rows_read,
                m.files_read
            );
            println!(
                "  {} transactions settled apart ({} rows in ledger_conflicts, version {}); {} left to a neighbouring day",
                m.disputed, m.conflict_rows, m.conflicts_version, m.ceded
            );
            if m.rows_without_event_time > 0 {
                println!(
                    "  {} raw rows that arrived on {} have no event_time and are in no ledger day",
                    m.rows_without_event_time, m.day
                );
            }
            println!(
                "  committed as ledger version {} ({} files added, {} replaced) in {:.2} s; fingerprint {:016x}",
                m.version,
                m.added_files,
                m.removed_files,
                m.elapsed.as_secs_f64(),
                m.fingerprint.row_hash
            );
        }
    }
}

/// The neighbouring days to rebuild, as JSON.
pub fn days_to_rebuild(m: &LedgerMetrics) -> serde_json::Value {
    m.stale_days.iter().map(|s| s.to_json()).collect()
}
