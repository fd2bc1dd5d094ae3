//! `tally sql`: one-shot SQL over every registered table.

use crate::args::SqlArgs;
use crate::context::Context;
use crate::output::write_stream;
use anyhow::Result;
use tally_engine::query::{self, Access};
use tally_engine::session::SessionOptions;

/// Access level from the `--allow-write` flag.
pub fn access(allow_write: bool) -> Access {
    if allow_write {
        Access::AllowWrite
    } else {
        Access::ReadOnly
    }
}

pub async fn run(ctx: &Context, args: &SqlArgs) -> Result<()> {
    let statements = query::parse(&args.query)?;
    if statements.is_empty() {
        anyhow::bail!("no SQL statement given");
    }
    if !args.allow_write {
        // A text with a write runs none of its statements.
        query::check_all_read_only(&statements)?;
    }
    let opts = SessionOptions {
        memory_limit: args.memory_limit,
        workers: ctx.workers(&args.cluster).await?,
        ..Default::default()
    };
    let session = ctx.session(&opts).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for stmt in statements {
        run_statement(
            &session,
            stmt,
            access(args.allow_write),
            args.format,
            args.max_rows,
            &mut out,
        )
        .await?;
    }
    Ok(())
}

/// Plans and runs one statement, writing its rows to `out` (shared with `tally shell`); a
/// failure in the Parquet reader names the raw file of the plan's scans at fault.
pub async fn run_statement(
    session: &tally_engine::session::TallySession,
    stmt: tally_engine::datafusion::sql::parser::Statement,
    access: Access,
    format: crate::args::OutputFormat,
    max_rows: usize,
    out: &mut dyn std::io::Write,
) -> Result<u64> {
    let df = query::plan(session, stmt, access).await?;
    let task = std::sync::Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await?;
    let ran = async {
        let stream = tally_engine::datafusion::physical_plan::execute_stream(
            std::sync::Arc::clone(&plan),
            task,
        )?;
        write_stream(stream, format, max_rows, out).await
    }
    .await;
    match ran {
        Ok(rows) => Ok(rows),
        Err(e) => Err(name_bad_file(session, &plan, e).await),
    }
}

/// A query that failed inside the Parquet reader: name the raw file at fault if one is.
async fn name_bad_file(
    session: &tally_engine::session::TallySession,
    plan: &std::sync::Arc<dyn tally_engine::datafusion::physical_plan::ExecutionPlan>,
    e: anyhow::Error,
) -> anyhow::Error {
    if e.chain().any(|c| c.to_string().contains("Parquet")) {
        let files = query::raw_files_scanned(session.lake(), plan);
        if let Some(bad) = tally_engine::raw_files::find_bad_file(session.lake(), &files).await {
            return bad.into();
        }
    }
    e
}
