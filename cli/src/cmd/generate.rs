//! `tally generate`: a realistic raw lake for demos, tests and benchmarks.

use crate::args::GenerateArgs;
use crate::context::Context;
use crate::progress_bar::Bar;
use anyhow::Result;
use tally_engine::generate::{generate, GenerateOptions};

pub async fn run(ctx: &Context, args: &GenerateArgs) -> Result<()> {
    let opts = GenerateOptions {
        start: tally_engine::day::parse(&args.start)?,
        days: args.days,
        events_per_day: args.events_per_day,
        seed: args.seed,
        skew_free: args.skew_free,
        partners: args.partners,
        outage: args.outage,
        ..Default::default()
    };
    let bar = Bar::new();
    let m = generate(&ctx.lake, &opts, &bar).await?;
    bar.finish();
    let secs = m.elapsed.as_secs_f64().max(1e-9);
    println!(
        "wrote {} raw rows ({} transactions) in {} files, {:.1} MiB, to {}",
        m.rows,
        m.transactions,
        m.files,
        m.bytes as f64 / (1024.0 * 1024.0),
        ctx.lake.url_of("raw/payments")?,
    );
    println!(
        "{:.2} s, {:.0} events/s",
        secs,
        m.transactions as f64 / secs
    );
    if let Some((partner, day, arrival)) = &m.replay {
        println!("late replay: {partner} re-sent event day {day}, landing on {arrival}");
    }
    Ok(())
}
