//! `tally demo`: makes a sample lake with realistic traffic and shows what tally does with it.

use crate::args::{DemoArgs, OutputFormat};
use crate::context::Context;
use crate::output::write_stream;
use crate::progress_bar::Bar;
use anyhow::Result;
use tally_engine::generate::{generate, GenerateOptions};
use tally_engine::ledger::LedgerJob;
use tally_engine::query::{self, Access};
use tally_engine::session::{SessionOptions, TallySession};

/// Sample questions an analyst asks first, with what each shows.
const QUERIES: &[(&str, &str)] = &[
    (
        "Arrivals per day: raw rows, distinct transactions, and the duplicates between them",
        "SELECT ingest_date, count(*) AS raw_rows, count(DISTINCT txn_id) AS transactions, \
         count(*) - count(DISTINCT txn_id) AS duplicate_copies \
         FROM raw_payments GROUP BY ingest_date ORDER BY ingest_date",
    ),
    (
        "The five busiest partners: volume is heavily skewed",
        "SELECT partner_id, count(*) AS events, \
         round(100.0 * count(*) / sum(count(*)) OVER (), 1) AS pct_of_all, \
         sum(amount) AS amount \
         FROM raw_payments GROUP BY partner_id ORDER BY events DESC LIMIT 5",
    ),
    (
        "Error rate per status",
        "SELECT status, count(*) AS events, round(100.0 * count(*) / sum(count(*)) OVER (), 2) AS pct \
         FROM raw_payments GROUP BY status ORDER BY events DESC",
    ),
    (
        "Copies that arrived on a later day than their event: a partner's late replay stands out",
        "SELECT partner_id, CAST(event_time AS DATE) AS event_day, ingest_date, count(*) AS copies \
         FROM raw_payments WHERE ingest_date > CAST(event_time AS DATE) \
         GROUP BY 1, 2, 3 ORDER BY copies DESC LIMIT 5",
    ),
];

/// What finance and analysts ask of the ledger.
const LEDGER_QUERIES: &[(&str, &str)] = &[
    (
        "Ledger per day: each transaction once, however many copies arrived",
        "SELECT event_date, count(*) AS transactions, sum(copies) AS raw_copies, sum(amount) AS amount, \
         sum(CASE WHEN status <> 'ok' THEN 1 ELSE 0 END) AS errors FROM ledger GROUP BY 1 ORDER BY 1",
    ),
    (
        "A disputed transaction: copies that disagree, and the one that won",
        "SELECT txn_id, partner_id, amount, status, first_ingest_time, copies, is_winner \
         FROM ledger_conflicts WHERE txn_id = (SELECT min(txn_id) FROM ledger_conflicts) ORDER BY first_ingest_time",
    ),
];

pub async fn run(ctx: &Context, args: &DemoArgs) -> Result<()> {
    println!("tally demo on {}\n", ctx.lake.root());
    let have_raw = ctx.lake.is_local()
        && ctx
            .lake
            .root()
            .to_file_path()
            .map(|p| p.join("raw/payments").is_dir())
            .unwrap_or(false);
    if have_raw && !args.regenerate {
        println!("1. Using the raw lake already there (pass --regenerate to write a fresh one).\n");
    } else {
        let opts = GenerateOptions {
            days: args.days,
            events_per_day: args.events_per_day,
            ..Default::default()
        };
        let bar = Bar::new();
        let m = generate(&ctx.lake, &opts, &bar).await?;
        bar.finish();
        println!(
            "1. Wrote a raw lake: {} days × {} transactions from 300 partners = {} raw rows in {} Parquet files ({:.1} s).",
            args.days, args.events_per_day, m.rows, m.files, m.elapsed.as_secs_f64()
        );
        if let Some((partner, day, arrival)) = &m.replay {
            println!("   {partner} re-sent its whole day {day}; the copies landed on {arrival}.");
        }
        println!();
    }
    let session = ctx.session(&SessionOptions::default()).await?;
    for (i, (title, sql)) in QUERIES.iter().enumerate() {
        show(&session, i + 2, title, sql).await?;
    }
    // The ledger for every generated day, then what finance reads.
    let start = GenerateOptions::default().start;
    let mut step = QUERIES.len() + 2;
    println!(
        "{step}. The ledger, one atomic Delta commit per event day (`tally ledger --date D`):"
    );
    for offset in 0..args.days {
        let day = start + chrono::Days::new(offset as u64);
        let session = ctx
            .session(&SessionOptions {
                target_partitions: Some(16),
                ..Default::default()
            })
            .await?;
        let m = LedgerJob::new(&session, day).run().await?;
        println!(
            "   {day}: {} raw rows read → {} transactions, amount {}; {} disputed, {} conflict rows; version {} ({:.2} s)",
            m.rows_read, m.ledger_rows, m.fingerprint.amount_text(), m.disputed, m.conflict_rows, m.version, m.elapsed.as_secs_f64()
        );
    }
    println!();
    step += 1;
    let session = ctx.session(&SessionOptions::default()).await?;
    for (title, sql) in LEDGER_QUERIES {
        show(&session, step, title, sql).await?;
        step += 1;
    }
    println!("Next: `tally shell` for interactive SQL over the same lake (\\d lists tables).");
    Ok(())
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
