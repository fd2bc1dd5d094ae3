//! `tally shell`: interactive SQL.
//!
//! Line editing and history (rustyline, `~/.tally_history`), statements may span lines and end
//! with `;`, backslash commands (`\d`, `\d NAME`, `\q`, `\?`) act at once, every query prints a
//! timing line, and Ctrl-C cancels the running query without leaving the shell.

use crate::args::OutputFormat;
use crate::args::ShellArgs;
use crate::cmd::sql::access;
use crate::context::Context;
use crate::output::print_table;
use anyhow::Result;
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;
use std::sync::Arc;
use std::time::Instant;
use tally_engine::arrow::array::{RecordBatch, StringArray};
use tally_engine::arrow::datatypes::{DataType, Field, Schema};
use tally_engine::query;
use tally_engine::session::{FreshSession, SessionOptions, TallySession};
use tokio::runtime::Runtime;

const HELP: &str = "\
Statements end with `;` and may span lines. Commands:
  \\d          list tables
  \\d NAME     describe a table's columns
  \\q          quit (or Ctrl-D)
  \\?          this help
Ctrl-C cancels a running query, or clears the statement being typed.";

pub fn run(rt: &Runtime, ctx: &Context, args: &ShellArgs) -> Result<()> {
    // A shell lives long: it sees raw files that land while it is open.
    let opts = SessionOptions {
        fresh_listings: true,
        ..Default::default()
    };
    // Each statement sees what was committed before it: a shell stays open for hours.
    let mut fresh = rt.block_on(FreshSession::open(&ctx.lake, &ctx.config, &opts))?;
    let mut editor = DefaultEditor::new()?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".tally_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "tally shell on {} — \\? for help, \\q to quit",
        ctx.lake.root()
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "tally> "
        } else {
            "   ..> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let trimmed = line.trim();
                if buffer.is_empty() && trimmed.starts_with('\\') {
                    let _ = editor.add_history_entry(trimmed);
                    if trimmed == "\\q" {
                        break;
                    }
                    if let Some(session) = current(rt, &mut fresh) {
                        backslash(rt, session, trimmed)?;
                    }
                    continue;
                }
                if trimmed.is_empty() && buffer.is_empty() {
                    continue;
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if trimmed.ends_with(';') {
                    let sql = std::mem::take(&mut buffer);
                    let _ = editor.add_history_entry(sql.trim());
                    if let Some(session) = current(rt, &mut fresh) {
                        run_statements(rt, session, &sql, args);
                    }
                }
            }
            Err(ReadlineError::Interrupted) => {
                buffer.clear();
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

/// The session with every commit made so far, or `None` after printing why not (the store
/// unreachable: the shell stays open).
fn current<'a>(rt: &Runtime, fresh: &'a mut FreshSession) -> Option<&'a TallySession> {
    match rt.block_on(fresh.current()) {
        Ok(session) => Some(session),
        Err(e) => {
            eprintln!("error: {}", tally_engine::lake::one_line(&e.to_string()));
            None
        }
    }
}

/// Runs one or more statements, printing results, a timing line, or the error.
fn run_statements(rt: &Runtime, session: &TallySession, sql: &str, args: &ShellArgs) {
    let started = Instant::now();
    let work = async {
        let mut rows = 0;
        let statements = query::parse(sql)?;
        if !args.allow_write {
            query::check_all_read_only(&statements)?;
        }
        for stmt in statements {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            rows += crate::cmd::sql::run_statement(
                session,
                stmt,
                access(args.allow_write),
                OutputFormat::Table,
                args.max_rows,
                &mut out,
            )
            .await?;
        }
        anyhow::Ok(rows)
    };
    let outcome = rt.block_on(async {
        tokio::select! {
            r = work => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let secs = started.elapsed().as_secs_f64();
    match outcome {
        Some(Ok(rows)) => println!(
            "{rows} row{} in {secs:.3}s",
            if rows == 1 { "" } else { "s" }
        ),
        Some(Err(e)) => eprintln!("error: {}", crate::one_line_chain(&e)),
        None => eprintln!("cancelled after {secs:.3}s"),
    }
}

/// Handles a backslash command; returns false to quit.
fn backslash(rt: &Runtime, session: &TallySession, cmd: &str) -> Result<bool> {
    let mut parts = cmd.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("\\q"), _) => return Ok(false),
        (Some("\\?"), _) | (Some("\\h"), _) => println!("{HELP}"),
        (Some("\\d"), None) => println!("{}", crate::cmd::tables::render(session)),
        (Some("\\d"), Some(name)) => match rt.block_on(session.ctx().table_provider(name)) {
            Ok(provider) => {
                let schema = provider.schema();
                let names: StringArray = schema
                    .fields()
                    .iter()
                    .map(|f| Some(f.name().clone()))
                    .collect();
                let types: StringArray = schema
                    .fields()
                    .iter()
                    .map(|f| Some(f.data_type().to_string()))
                    .collect();
                let nulls: StringArray = schema
                    .fields()
                    .iter()
                    .map(|f| Some(if f.is_nullable() { "YES" } else { "NO" }))
                    .collect();
                let out_schema = Arc::new(Schema::new(vec![
                    Field::new("column", DataType::Utf8, false),
                    Field::new("type", DataType::Utf8, false),
                    Field::new("nullable", DataType::Utf8, false),
                ]));
                let batch = RecordBatch::try_new(
                    out_schema.clone(),
                    vec![Arc::new(names), Arc::new(types), Arc::new(nulls)],
                )?;
                print_table(&out_schema, &[batch], &mut std::io::stdout())?;
            }
            Err(_) => eprintln!("error: table not found: {name}"),
        },
        _ => eprintln!("unknown command {cmd}; \\? for help"),
    }
    Ok(true)
}
