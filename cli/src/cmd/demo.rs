//! `tally demo`: the whole loop on a sample lake, told as a short story.
//!
//! A sample lake is generated in which one partner had an outage: its events of four hours
//! reach the lake only with its replay a day or two later. The demo holds the replay back,
//! runs the live view, the ledger backfill and a reconciliation (all agree: both paths missed
//! the outage), then lets the replay land, runs live again (the replay is behind the watermark:
//! it goes to `live_late`), re-runs the backfill (the changed days are rebuilt, the rest
//! skipped) and reconciles again: the ledger has moved away from the live view by exactly what
//! `live_late` explains. Each step names the command a user would type.

use crate::args::{DemoArgs, OutputFormat};
use crate::cmd::reconcile::money;
use crate::context::Context;
use crate::output::write_stream;
use crate::progress_bar::Bar;
use anyhow::{bail, Result};
use chrono::{Days, NaiveDate};
use tally_engine::backfill::{BackfillJob, DayOutcome};
use tally_engine::generate::{generate, GenerateOptions};
use tally_engine::lake::{layout, Lake};
use tally_engine::live::LiveJob;
use tally_engine::object_store::path::Path as StorePath;
use tally_engine::object_store::ObjectStoreExt;
use tally_engine::query::{self, Access};
use tally_engine::raw_files::list_parquet;
use tally_engine::reconcile::{ReconcileJob, ReconcileReport};
use tally_engine::session::{SessionOptions, TallySession};

/// Marks a lake the demo made, so a re-run may replace it (and never a lake it did not make).
const MARKER: &str = "_tally_demo";
/// Where the held-back replay waits until it "lands".
const HELD: &str = "_tally_demo/held";

pub async fn run(ctx: &Context, args: &DemoArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let lake = &ctx.lake;
    println!("tally demo on {}\n", lake.root());
    prepare(lake, args.regenerate).await?;

    // 1. The raw lake.
    let opts = GenerateOptions {
        days: args.days.max(3),
        events_per_day: args.events_per_day,
        outage: true,
        ..Default::default()
    };
    let bar = Bar::new();
    let m = generate(lake, &opts, &bar).await?;
    bar.finish();
    let Some((partner, replay_day, arrival)) = m.replay.clone() else {
        bail!("the generator made no replay");
    };
    let first = opts.start;
    let last = first + Days::new(opts.days as u64 - 1);
    println!(
        "1. A raw lake (`tally generate --days {} --events-per-day {} --outage`): {} raw rows in {} Parquet files for {} transactions, \
         Zipf-skewed over 300 partners, with webhook retries and a few conflicting copies.",
        opts.days, opts.events_per_day, m.rows, m.files, m.transactions
    );
    println!(
        "   {partner} had an outage on {replay_day} from 10:00 to 14:00: those events reach the lake only with its replay of the \
         whole day, landing on {arrival}. The demo holds that replay back for now.\n"
    );
    let held = hold_replay(lake).await?;

    // 2. Live view, ledger, reconcile: before the replay.
    let live = live_once(lake, ctx).await?;
    println!(
        "2. `tally live --once`: {} micro-batches, {} raw rows -> {} events in live_view ({} duplicate copies dropped in flight, {} late).",
        live.batches, live.rows, live.applied, live.deduped, live.late
    );
    let built = backfill(ctx, first, last).await?;
    println!("3. `tally backfill --from {first} --to {last}`: {built}");
    let before = reconcile(ctx, replay_day).await?;
    let p_before = partner_row(&before, &partner);
    println!(
        "4. `tally reconcile --date {replay_day}`: {} partner/currency rows, {} beyond the threshold. {partner}: ledger {} events, live view {} — \
         both paths missed the outage.\n",
        before.partners.len(),
        before.drifting,
        p_before.0,
        p_before.1
    );

    // 3. The replay lands.
    release_replay(lake, &held).await?;
    println!(
        "5. The replay lands: {} file(s) in ingest_date={arrival}.",
        held.len()
    );
    let live = live_once(lake, ctx).await?;
    println!(
        "6. `tally live --once` again: {} raw rows; {} arrived behind the watermark and are recorded in live_late, {} applied to live_view \
         (the late rows are kept for reconciliation, not dropped, and not mixed into operations' view).",
        live.rows, live.late, live.applied
    );
    let built = backfill(ctx, first, last).await?;
    println!(
        "7. `tally backfill --from {first} --to {last}` again (a day is rebuilt when the raw files of its arrival window changed): {built}"
    );
    let after = reconcile(ctx, replay_day).await?;
    let rows: Vec<_> = after
        .partners
        .iter()
        .filter(|p| p.partner_id.as_deref() == Some(partner.as_str()))
        .collect();
    if !rows.is_empty() {
        // Counts add up over currencies; amounts are shown per currency, never summed.
        let sum =
            |f: fn(&&tally_engine::reconcile::PartnerDrift) -> i64| rows.iter().map(f).sum::<i64>();
        let amounts: Vec<String> = rows
            .iter()
            .map(|p| {
                format!(
                    "{} {} vs {}",
                    p.currency.as_deref().unwrap_or("(none)"),
                    money(p.ledger_amount_cents),
                    money(p.live_amount_cents)
                )
            })
            .collect();
        let raw = rows.iter().map(|p| p.raw_drift).fold(0.0, f64::max);
        let unexplained = rows.iter().map(|p| p.unexplained_drift).fold(0.0, f64::max);
        let drifting = rows.iter().any(|p| p.drifting);
        println!(
            "8. `tally reconcile --date {replay_day}`: {partner} now has {} events in the ledger vs {} in the live view \
             (largest raw drift {:.2}%; amounts per currency: {}). live_late holds {} events for it that day, which explains the gap: \
             unexplained drift {:.3}% -> {}. {} of {} partner/currency rows beyond the threshold; exit code {}.",
            sum(|p| p.ledger_events),
            sum(|p| p.live_events),
            raw * 100.0,
            amounts.join(", "),
            sum(|p| p.late_events),
            unexplained * 100.0,
            if drifting { "DRIFT" } else { "ok" },
            after.drifting,
            after.partners.len(),
            if after.drifting > 0 { 3 } else { 0 }
        );
    }
    println!();

    // 4. What finance and analysts can ask now.
    let session = ctx.session(&SessionOptions::default()).await?;
    show(
        &session,
        9,
        "The ledger per day: every transaction once, however many copies arrived",
        "SELECT event_date, count(*) AS transactions, sum(copies) AS raw_copies, sum(amount) AS amount FROM ledger GROUP BY 1 ORDER BY 1",
    )
    .await?;
    show(
        &session,
        10,
        "The run log: what built each day, from which inputs, and what was skipped",
        "SELECT day, command, outcome, rows_read, ledger_rows, ledger_version FROM runs ORDER BY finished_at",
    )
    .await?;
    let disputed = first_disputed(&session).await?;
    if let Some(id) = disputed {
        let t = tally_engine::trace::trace(&session, &id, ctx.config.ledger.late_days).await?;
        println!(
            "11. `tally trace --txn {id}`: {} raw copies, {} different payloads; winner: {}.",
            t.copies.len(),
            t.payloads,
            t.why
        );
    }
    println!(
        "\nDone in {:.1} s. Next: `tally shell` for SQL over the same lake (\\d lists tables: raw_payments, ledger, \
         ledger_conflicts, live_view, live_late, reconciliations, runs).",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Refuses a lake the demo did not make; clears one it made.
async fn prepare(lake: &Lake, regenerate: bool) -> Result<()> {
    let top = match lake.list_dirs("").await {
        Ok(t) => t,
        Err(_) if lake.is_local() => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let ours = top.iter().any(|d| d == MARKER);
    if !top.is_empty() && !ours && !regenerate {
        bail!(
            "{} already holds data the demo did not make; pass --lake with an empty directory (or --regenerate to overwrite)",
            lake.root()
        );
    }
    if !lake.is_local() && !top.is_empty() {
        bail!("the demo only replaces a local sample lake; point --lake at an empty prefix");
    }
    if let Ok(path) = lake.root().to_file_path() {
        for dir in top {
            let p = path.join(&dir);
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            }
        }
        std::fs::create_dir_all(path.join(MARKER))?;
    }
    Ok(())
}

/// Moves the replay files out of the raw tree; returns (held, original) paths.
async fn hold_replay(lake: &Lake) -> Result<Vec<(StorePath, StorePath)>> {
    let mut moved = Vec::new();
    for meta in list_parquet(lake, layout::RAW_PAYMENTS).await? {
        if !meta.location.as_ref().contains("-replay-") {
            continue;
        }
        let rel = lake.relative_path(&meta.location);
        let held = lake.file_path(&format!("{HELD}/{}", rel.replace('/', "__")))?;
        lake.store().rename(&meta.location, &held).await?;
        moved.push((held, meta.location));
    }
    Ok(moved)
}

async fn release_replay(lake: &Lake, held: &[(StorePath, StorePath)]) -> Result<()> {
    for (from, to) in held {
        lake.store().rename(from, to).await?;
    }
    Ok(())
}

async fn live_once(lake: &Lake, ctx: &Context) -> Result<tally_engine::live::LiveSummary> {
    let mut cfg = ctx.config.live.clone();
    cfg.start_lookback_days = 3650;
    cfg.max_files_per_batch = 4;
    cfg.retention = std::time::Duration::from_secs(3650 * 86_400);
    Ok(LiveJob::new(lake, &cfg).once(true).run(|_| {}).await?)
}

async fn backfill(ctx: &Context, from: NaiveDate, to: NaiveDate) -> Result<String> {
    let mut parts = Vec::new();
    let summary = BackfillJob::new(&ctx.lake, &ctx.config, from, to)?
        .with_jobs(1)
        .run(|d| {
            parts.push(match &d.outcome {
                DayOutcome::Built(m) => format!(
                    "{} built ({} transactions from {} raw rows, ledger version {})",
                    d.day, m.ledger_rows, m.rows_read, m.version
                ),
                DayOutcome::Skipped => format!("{} skipped (inputs unchanged)", d.day),
                DayOutcome::Failed(e) => format!("{} FAILED: {e}", d.day),
            })
        })
        .await?;
    if !summary.failed.is_empty() {
        bail!("backfill failed: {}", parts.join("; "));
    }
    Ok(parts.join("; "))
}

async fn reconcile(ctx: &Context, day: NaiveDate) -> Result<ReconcileReport> {
    let session = ctx.session(&SessionOptions::default()).await?;
    Ok(ReconcileJob::new(&session, day)
        .with_threshold(ctx.config.reconcile.threshold)
        .run()
        .await?)
}

/// A partner's (ledger, live) event counts over its currencies.
fn partner_row(r: &ReconcileReport, partner: &str) -> (i64, i64) {
    r.partners
        .iter()
        .filter(|p| p.partner_id.as_deref() == Some(partner))
        .fold((0, 0), |(l, v), p| (l + p.ledger_events, v + p.live_events))
}

async fn first_disputed(session: &TallySession) -> Result<Option<String>> {
    if session.table(layout::LEDGER_CONFLICTS).is_err() {
        return Ok(None);
    }
    let batches = session
        .ctx()
        .sql("SELECT min(txn_id) FROM ledger_conflicts")
        .await?
        .collect()
        .await?;
    Ok(batches.first().and_then(|b| {
        let c = tally_engine::arrow::compute::cast(
            b.column(0),
            &tally_engine::arrow::datatypes::DataType::Utf8,
        )
        .ok()?;
        let s = tally_engine::arrow::array::AsArray::as_string::<i32>(&c);
        (!tally_engine::arrow::array::Array::is_null(s, 0)).then(|| s.value(0).to_string())
    }))
}

/// Prints a numbered step: its title, the command a user would type, and the result.
async fn show(session: &TallySession, step: usize, title: &str, sql: &str) -> Result<()> {
    println!("{step}. {title}:\n   tally sql \"{sql}\"");
    let stmt = query::parse(sql)?.remove(0);
    let df = query::plan(session, stmt, Access::ReadOnly).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    write_stream(
        df.execute_stream().await?,
        OutputFormat::Table,
        20,
        &mut out,
    )
    .await?;
    println!();
    Ok(())
}
