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
    let opts = SessionOptions {
        memory_limit: args.memory_limit,
        ..Default::default()
    };
    let session = ctx.session(&opts).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for stmt in statements {
        let ran = async {
            let df = query::plan(&session, stmt, access(args.allow_write)).await?;
            let stream = df.execute_stream().await?;
            write_stream(stream, args.format, args.max_rows, &mut out).await
        }
        .await;
        if let Err(e) = ran {
            return Err(name_bad_file(&session, e).await);
        }
    }
    Ok(())
}

/// A query that failed inside the Parquet reader: name the raw file at fault if one is.
pub async fn name_bad_file(
    session: &tally_engine::session::TallySession,
    e: anyhow::Error,
) -> anyhow::Error {
    if e.chain().any(|c| c.to_string().contains("Parquet")) {
        if let Some(bad) = tally_engine::raw_files::find_bad_file(session.lake()).await {
            return bad.into();
        }
    }
    e
}
