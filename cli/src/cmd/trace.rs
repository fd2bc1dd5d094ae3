//! `tally trace --txn ID`: every raw copy of a transaction, the winner and why, and the ledger
//! day and version that hold it.

use crate::args::{SummaryFormat, TraceArgs};
use crate::cmd::reconcile::money;
use crate::context::Context;
use anyhow::Result;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use tally_engine::session::SessionOptions;

fn time(us: Option<i64>) -> String {
    us.and_then(chrono::DateTime::from_timestamp_micros)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
        .unwrap_or_else(|| "-".into())
}

pub async fn run(ctx: &Context, args: &TraceArgs) -> Result<()> {
    let late_days = args.late_days.unwrap_or(ctx.config.ledger.late_days);
    let session = ctx.session(&SessionOptions::default()).await?;
    let t = tally_engine::trace::trace(&session, &args.txn, late_days).await?;
    if args.format == SummaryFormat::Json {
        println!("{}", serde_json::to_string(&t)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "",
        "ingest_time",
        "event_time",
        "partner",
        "amount",
        "currency",
        "status",
        "file",
    ]);
    for c in &t.copies {
        table.add_row(vec![
            if c.winner { "WINNER" } else { "" }.to_string(),
            time(c.ingest_time),
            time(c.event_time),
            c.partner_id.clone().unwrap_or_default(),
            c.amount_cents.map(money).unwrap_or_default(),
            c.currency.clone().unwrap_or_default(),
            c.status.clone().unwrap_or_default(),
            c.file.clone(),
        ]);
    }
    println!("transaction {}: {} raw copies", t.txn_id, t.copies.len());
    println!("{table}");
    println!("winner: {}", t.why);
    if t.payloads > 1 {
        println!(
            "dispute: {} different payloads among the copies; ledger_conflicts lists each",
            t.payloads
        );
    }
    match &t.ledger {
        Some(l) => println!(
            "ledger: event_date {} ({} copies, amount {}, status {}), written by ledger version {}",
            l.event_date,
            l.copies,
            l.amount_cents.map(money).unwrap_or_default(),
            l.status.clone().unwrap_or_default(),
            l.version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "? (not in the runs log)".into())
        ),
        None => {
            println!("ledger: not in any ledger day yet (run `tally ledger` for its event day)")
        }
    }
    Ok(())
}
