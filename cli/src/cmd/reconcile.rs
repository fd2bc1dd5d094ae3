//! `tally reconcile --date D`: ledger vs live view per partner; exit 3 when drift is beyond the
//! threshold.

use crate::args::{ReconcileArgs, SummaryFormat};
use crate::context::Context;
use anyhow::Result;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use std::process::ExitCode;
use tally_engine::reconcile::{ReconcileJob, ReconcileReport};
use tally_engine::session::SessionOptions;

/// Exit code when an unexplained drift exceeds the threshold (SPEC).
const DRIFT: u8 = 3;

pub async fn run(ctx: &Context, args: &ReconcileArgs) -> Result<ExitCode> {
    let day = tally_engine::day::parse(&args.date)?;
    let threshold = args.threshold.unwrap_or(ctx.config.reconcile.threshold);
    if !(threshold.is_finite() && threshold >= 0.0) {
        anyhow::bail!("invalid --threshold {threshold}: expected a ratio >= 0, e.g. 0.001");
    }
    let session = ctx.session(&SessionOptions::default()).await?;
    let report = ReconcileJob::new(&session, day)
        .with_threshold(threshold)
        .run()
        .await?;
    match args.format {
        SummaryFormat::Json => println!("{}", serde_json::to_string(&report)?),
        SummaryFormat::Table => print_table(&report),
    }
    Ok(if report.drifting > 0 {
        ExitCode::from(DRIFT)
    } else {
        ExitCode::SUCCESS
    })
}

/// Cents as a decimal text, exact.
pub fn money(cents: i128) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    format!("{sign}{}.{:02}", c / 100, c % 100)
}

fn pct(x: f64) -> String {
    format!("{:.3}%", x * 100.0)
}

fn print_table(r: &ReconcileReport) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "partner",
        "currency",
        "ledger events",
        "live events",
        "late events",
        "ledger amount",
        "live amount",
        "late amount",
        "ledger errors",
        "live errors",
        "raw drift",
        "unexplained",
        "verdict",
    ]);
    // Drifting partners first, then the biggest raw drifts: what a person looks at first.
    let mut rows: Vec<_> = r.partners.iter().collect();
    rows.sort_by(|a, b| {
        b.drifting
            .cmp(&a.drifting)
            .then(b.raw_drift.total_cmp(&a.raw_drift))
    });
    let shown = 20;
    for p in rows.iter().take(shown) {
        t.add_row(vec![
            p.partner_id.clone().unwrap_or_else(|| "(none)".into()),
            p.currency.clone().unwrap_or_else(|| "(none)".into()),
            p.ledger_events.to_string(),
            p.live_events.to_string(),
            p.late_events.to_string(),
            money(p.ledger_amount_cents),
            money(p.live_amount_cents),
            money(p.late_amount_cents),
            p.ledger_errors.to_string(),
            p.live_errors.to_string(),
            pct(p.raw_drift),
            pct(p.unexplained_drift),
            if p.drifting { "DRIFT" } else { "ok" }.to_string(),
        ]);
    }
    println!("{t}");
    if rows.len() > shown {
        println!(
            "({} more partner/currency rows with smaller drift; --format json lists all)",
            rows.len() - shown
        );
    }
    println!(
        "reconcile {}: {} partner/currency rows, {} beyond the unexplained-drift threshold {} (ledger version {}, live_view version {}); recorded in reconciliations version {}",
        r.day,
        r.partners.len(),
        r.drifting,
        pct(r.threshold),
        r.ledger_version.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
        r.live_view_version.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
        r.recorded_version
    );
    if !r.quarantined_files.is_empty() {
        println!(
            "{} raw file(s) of {} or the day after were quarantined by the live mode (in no live figure; see live_quarantine):",
            r.quarantined_files.len(),
            r.day
        );
        for f in &r.quarantined_files {
            println!("  {f}");
        }
    }
}
