//! `tally optimize --date D`: one ledger day's files rewritten as fewer, sorted ones.

use crate::args::{OptimizeArgs, SummaryFormat};
use crate::context::Context;
use anyhow::Result;
use tally_engine::session::SessionOptions;

pub async fn run(ctx: &Context, args: &OptimizeArgs) -> Result<()> {
    let day = tally_engine::day::parse(&args.date)?;
    let opts = SessionOptions {
        memory_limit: args.memory_limit,
        ..Default::default()
    };
    let session = ctx.session(&opts).await?;
    let report = tally_engine::upkeep::optimize(&session, day).await?;
    if args.format == SummaryFormat::Json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    match (&report.skipped, report.version) {
        (Some(why), _) => println!("ledger {day}: left as it is ({why})"),
        (None, Some(v)) => println!(
            "ledger {day}: {} files rewritten as {} ({} rows, fingerprint {}), committed as ledger version {v}; \
             the old files stay readable by older versions until `tally vacuum`",
            report.files_before,
            report.files_after,
            report.rows,
            report.fingerprint["row_hash"].as_str().unwrap_or("?"),
        ),
        (None, None) => println!("ledger {day}: nothing committed"),
    }
    Ok(())
}
