//! `tally backfill --from D1 --to D2 [--jobs N]`: the ledger for every day of a range.
//!
//! On a terminal: an `indicatif` bar (days done, raw rows/s, ETA). Otherwise (cron, Airflow):
//! one JSON object per finished day on stdout, then a summary object. Ctrl-C stops starting new
//! days; running it again resumes (unchanged days are skipped). Exit 1 names every failed day.

use crate::args::{BackfillArgs, ProgressMode};
use crate::context::Context;
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;
use tally_engine::backfill::{BackfillJob, DayOutcome, DayRun};
use tokio::sync::watch;

pub async fn run(ctx: &Context, args: &BackfillArgs) -> Result<ExitCode> {
    let from = tally_engine::day::parse(&args.from)?;
    let to = tally_engine::day::parse(&args.to)?;
    let job = BackfillJob::new(&ctx.lake, &ctx.config, from, to)?
        .with_jobs(args.jobs)
        .with_late_days(args.plan.late_days.unwrap_or(ctx.config.ledger.late_days))
        .with_buckets(args.plan.buckets.unwrap_or(ctx.config.ledger.buckets))
        .with_passes(args.plan.passes.map(|p| p as usize))
        .with_memory_limit(args.plan.memory_limit)
        .with_guard(args.plan.guard());
    let total = job.days().len() as u64;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "interrupted: finishing the days under way; run the same command again to resume"
            );
            let _ = tx.send(true);
        }
    });
    let json = match args.progress {
        ProgressMode::Json => true,
        ProgressMode::Bar => false,
        ProgressMode::Auto => !std::io::stderr().is_terminal(),
    };
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} days (ETA {eta}) {msg}",
    ) {
        bar.set_style(style);
    }
    let started = Instant::now();
    let mut rows = 0u64;
    let summary = job
        .with_shutdown(rx)
        .run(|d: &DayRun| {
            rows += d.rows_read();
            let rate = rows as f64 / started.elapsed().as_secs_f64().max(1e-3);
            if json {
                println!("{}", day_json(d));
            } else {
                bar.set_message(format!("{rate:.0} rows/s; {} {}", d.day, outcome_word(d)));
                bar.inc(1);
                if let DayOutcome::Failed(e) = &d.outcome {
                    bar.println(format!("{} failed: {e}", d.day));
                }
                if let DayOutcome::Built(m) = &d.outcome {
                    for line in super::ledger::warnings(m) {
                        bar.println(line);
                    }
                }
            }
        })
        .await?;
    bar.finish_and_clear();
    let line = serde_json::json!({
        "summary": {
            "days": total,
            "built": summary.built.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "skipped": summary.skipped.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "failed": summary.failed.iter().map(|(d, e)| serde_json::json!({"day": d.to_string(), "error": e})).collect::<Vec<_>>(),
            "not_started": summary.not_started.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "seconds": started.elapsed().as_secs_f64(),
            "rows_read": rows,
        }
    });
    if json {
        println!("{line}");
    } else {
        println!(
            "backfill {from}..{to}: {} built, {} skipped (inputs unchanged), {} failed, {} not started; {} raw rows in {:.1} s",
            summary.built.len(),
            summary.skipped.len(),
            summary.failed.len(),
            summary.not_started.len(),
            rows,
            started.elapsed().as_secs_f64()
        );
    }
    if !summary.failed.is_empty() {
        let days: Vec<String> = summary
            .failed
            .iter()
            .map(|(d, e)| format!("{d} ({e})"))
            .collect();
        eprintln!("error: {} day(s) failed: {}", days.len(), days.join("; "));
        return Ok(ExitCode::from(1));
    }
    if !summary.not_started.is_empty() {
        eprintln!(
            "error: interrupted with {} day(s) not started; run the same command again to resume",
            summary.not_started.len()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn outcome_word(d: &DayRun) -> &'static str {
    match d.outcome {
        DayOutcome::Built(_) => "built",
        DayOutcome::Skipped => "skipped",
        DayOutcome::Failed(_) => "FAILED",
    }
}

fn day_json(d: &DayRun) -> serde_json::Value {
    let mut v = serde_json::json!({
        "day": d.day.to_string(),
        "outcome": outcome_word(d).to_lowercase(),
        "seconds": d.elapsed.as_secs_f64(),
    });
    match &d.outcome {
        DayOutcome::Built(m) => {
            v["rows_read"] = m.rows_read.into();
            v["ledger_rows"] = m.ledger_rows.into();
            v["version"] = m.version.into();
            v["fingerprint"] = m.fingerprint.to_json();
            v["days_to_rebuild"] = super::ledger::days_to_rebuild(m);
            v["spread_beyond_bound"] = m.beyond_bound.into();
        }
        DayOutcome::Failed(e) => v["error"] = e.clone().into(),
        DayOutcome::Skipped => {}
    }
    v
}
