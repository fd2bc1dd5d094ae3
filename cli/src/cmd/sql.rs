//! `tally sql`: one-shot SQL over every registered table.

use crate::args::SqlArgs;
use crate::context::Context;
use crate::output::write_stream;
use anyhow::Result;
use std::io::Write;
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
    let mut workers = ctx.workers(&args.cluster).await?;
    loop {
        let opts = SessionOptions {
            memory_limit: args.memory_limit,
            workers: workers.clone(),
            ..Default::default()
        };
        let session = ctx.session(&opts).await?;
        if workers.is_none() {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            return run_all(&session, &statements, args, &mut out).await;
        }
        // On workers the answer is held until every statement has run, so that a run retried
        // after losing a worker prints it once.
        let mut held = Vec::new();
        match run_all(&session, &statements, args, &mut held).await {
            Ok(()) => {
                std::io::stdout().lock().write_all(&held)?;
                return Ok(());
            }
            Err(e) => match workers.as_ref() {
                Some(w) => match w.after_failure().await? {
                    Some(remaining) => workers = Some(remaining),
                    None => return Err(e),
                },
                None => return Err(e),
            },
        }
    }
}

async fn run_all(
    session: &tally_engine::session::TallySession,
    statements: &[tally_engine::datafusion::sql::parser::Statement],
    args: &SqlArgs,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    for stmt in statements {
        run_statement(
            session,
            stmt.clone(),
            access(args.allow_write),
            args.format,
            args.max_rows,
            out,
        )
        .await?;
    }
    out.flush()?;
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
