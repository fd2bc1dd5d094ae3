//! `tally vacuum`: collects the files tally's own tables no longer need.

use crate::args::{SummaryFormat, VacuumArgs};
use crate::context::Context;
use anyhow::Result;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use tally_engine::upkeep::{vacuum, VacuumOptions};

pub async fn run(ctx: &Context, args: &VacuumArgs) -> Result<()> {
    let opts = VacuumOptions {
        tables: args.tables.clone(),
        retain: *args.retain,
        dry_run: args.dry_run,
    };
    let report = vacuum(&ctx.lake, &opts).await?;
    if args.format == SummaryFormat::Json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    if report.dry_run {
        for t in &report.tables {
            for f in &t.files {
                println!("{}/{} ({} bytes)", t.table, f.path, f.bytes);
            }
        }
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec!["table", "data files", "bytes", "log files"]);
    for t in report.tables.iter().filter(|t| t.exists) {
        table.add_row(vec![
            t.table.clone(),
            t.files.len().to_string(),
            t.bytes.to_string(),
            if report.dry_run {
                "-".to_string()
            } else {
                t.log_files.to_string()
            },
        ]);
    }
    println!("{table}");
    println!(
        "{verb} {} data files, {} bytes (retention {}; raw/ is never vacuumed)",
        report.files(),
        report.bytes(),
        humantime::format_duration(std::time::Duration::from_secs(report.retain_secs)),
    );
    Ok(())
}
