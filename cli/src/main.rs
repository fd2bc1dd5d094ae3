//! The `tally` binary: parses arguments, sets up logging, dispatches to one command module, and
//! turns the outcome into an exit code (0 ok, 1 error, 2 usage, 3 reconciliation drift) with a
//! one-line message. A closed stdout (`tally sql … | head`) is success.

mod allocator;
mod args;
mod cmd;
mod context;
mod output;
mod progress_bar;

use args::{Cli, Command};
use clap::Parser;
use context::Context;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: the ledger's hash tables and row buffers grow, move and
/// free hundreds of MiB; glibc returned them to the kernel and faulted fresh zeroed pages back
/// in (a sixth of the ledger's CPU time was the kernel clearing pages). DataFusion's own CLI
/// and benchmarks make the same choice. Built without transparent huge pages (`no_thp`): with
/// them every first touch zeroed 2 MiB, and on this VM a quarter of the ledger's CPU time was
/// spent clearing huge pages.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The whole error chain on one line.
pub fn one_line_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = tally_engine::lake::one_line(&cause.to_string());
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<tally_engine::TallyError>()
                .is_some_and(|t| t.is_broken_pipe())
            || c.to_string().contains("Broken pipe")
    })
}

/// A command line that cannot run as given: exit 2, as clap does for a bad flag.
fn is_usage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<tally_engine::TallyError>(),
            Some(tally_engine::TallyError::Usage { .. })
        )
    })
}

fn init_logging(verbose: u8) {
    // delta-rs logs a missing table as an ERROR, a retried concurrent commit as a WARN and a
    // commit its conflict checker rejects as an ERROR; all are normal for tally (tables are
    // created on first use, days commit concurrently, and a rejected replacement is either
    // committed again on the newest snapshot or reported by tally itself as Busy).
    let quiet = "buoyant_kernel=off,delta_kernel=off,deltalake_core=error,deltalake_core::kernel::transaction=off";
    let default = match verbose {
        0 => format!("warn,{quiet}"),
        1 => format!("info,tally_engine=info,{quiet}"),
        _ => "debug".to_string(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ctx = Context::resolve(&cli.global)?;
    match &cli.command {
        Command::Sql(a) => rt.block_on(cmd::sql::run(&ctx, a))?,
        Command::Shell(a) => cmd::shell::run(&rt, &ctx, a)?,
        Command::Tables => rt.block_on(cmd::tables::run(&ctx))?,
        Command::Generate(a) => rt.block_on(cmd::generate::run(&ctx, a))?,
        Command::Ledger(a) => rt.block_on(cmd::ledger::run(&ctx, a))?,
        Command::Live(a) => return rt.block_on(cmd::live::run(&ctx, a)),
        Command::Backfill(a) => return rt.block_on(cmd::backfill::run(&ctx, a)),
        Command::Reconcile(a) => return rt.block_on(cmd::reconcile::run(&ctx, a)),
        Command::Trace(a) => rt.block_on(cmd::trace::run(&ctx, a))?,
        Command::Demo(a) => rt.block_on(cmd::demo::run(&ctx, a))?,
        Command::Serve(a) => rt.block_on(cmd::serve::run(&ctx, a))?,
        Command::Worker(a) => rt.block_on(cmd::worker::run(&ctx, a))?,
        Command::Vacuum(a) => rt.block_on(cmd::vacuum::run(&ctx, a))?,
        Command::Optimize(a) => rt.block_on(cmd::optimize::run(&ctx, a))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let limited = cli.memory_limit().is_some();
    let reexec_failed = allocator::reexec_with_short_purge_delay(limited);
    init_logging(cli.global.verbose);
    if let Some(e) = reexec_failed {
        tracing::warn!(error = %e, "could not restart with a short allocator purge delay; running on");
    }
    if limited {
        let delay = std::env::var(allocator::PURGE_DELAY_VAR).unwrap_or_else(|_| "default".into());
        tracing::info!(purge_delay_ms = %delay, "memory limit: allocator purge delay");
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if is_usage(&e) => {
            eprintln!("error: {}", one_line_chain(&e));
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {}", one_line_chain(&e));
            ExitCode::from(1)
        }
    }
}
