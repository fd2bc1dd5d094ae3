//! `tally live`: run micro-batches into `live_view` until Ctrl-C/SIGTERM (or once with `--once`).
//!
//! One line per committed batch on stdout (`--format json`: one JSON object per line, what the
//! live benchmark reads); the engine's tracing log carries the same figures. Ctrl-C or SIGTERM
//! lets the current batch commit and then exits 0.

use crate::args::{LiveArgs, SummaryFormat};
use crate::context::Context;
use anyhow::Result;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use tally_engine::live::{BatchMetrics, LiveJob, LiveSummary};
use tally_engine::ops::{metrics_server, LiveOps};
use tally_engine::serve::{self, auth::Token};
use tokio::sync::watch;

pub async fn run(ctx: &Context, args: &LiveArgs) -> Result<ExitCode> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::warn!("live: stopping after the current batch");
        let _ = tx.send(true);
    });
    let ops = start_ops(ctx, args).await?;
    let metrics = match args.metrics.as_deref() {
        Some(addr) => match serve::parse_addr("--metrics", addr)? {
            Some(addr) => {
                let token = Token::new(std::env::var("TALLY_TOKEN").ok());
                let listener = metrics_server::bind(addr, &token).await?;
                // stderr: stdout carries one batch per line (JSON with --format json).
                eprintln!("listening metrics {}", listener.local_addr()?);
                let mut stop = rx.clone();
                let source: Arc<dyn metrics_server::MetricsSource> = ops.clone();
                Some(tokio::spawn(metrics_server::run(
                    source,
                    listener,
                    token,
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                )))
            }
            None => None,
        },
        None => None,
    };
    let summary = run_loop(ctx, args, rx, &ops).await;
    ops.shutdown().await;
    if let Some(m) = metrics {
        m.abort();
    }
    let summary = summary?;
    if args.once && !summary.quarantined.is_empty() {
        eprintln!(
            "error: quarantined {} raw file(s), skipped so the view does not stall: {}",
            summary.quarantined.len(),
            summary.quarantined.join("; ")
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The metrics and alert rule of the loop: `[alerts]` of `tally.toml` under the flags.
pub async fn start_ops(ctx: &Context, args: &LiveArgs) -> Result<Arc<LiveOps>> {
    let mut alerts = ctx.config.alerts.clone();
    if let Some(w) = &args.alert_webhook {
        alerts.webhook = Some(w.clone());
    }
    if let Some(r) = args.alert_error_rate {
        alerts.error_rate = Some(r);
    }
    if let Some(n) = args.alert_min_events {
        alerts.min_events = n;
    }
    let grace = args.grace.map(Into::into).unwrap_or(ctx.config.live.grace);
    Ok(LiveOps::start(&ctx.lake, &alerts, grace).await?)
}

/// The live loop with `args` over `tally.toml`'s settings, until `stop` is raised (or once);
/// reports each batch to `ops`, prints a line per batch and the summary. Shared with `tally
/// serve --live`.
pub async fn run_loop(
    ctx: &Context,
    args: &LiveArgs,
    stop: watch::Receiver<bool>,
    ops: &LiveOps,
) -> Result<LiveSummary> {
    let mut cfg = ctx.config.live.clone();
    if let Some(d) = args.interval {
        cfg.interval = d.into();
    }
    if let Some(d) = args.dedup_ttl {
        cfg.dedup_ttl = d.into();
    }
    if let Some(d) = args.grace {
        cfg.grace = d.into();
    }
    if let Some(d) = args.retention {
        cfg.retention = d.into();
    }
    if let Some(n) = args.max_files_per_batch {
        cfg.max_files_per_batch = n;
    }
    if let Some(n) = args.compact_every {
        cfg.compact_every = n;
    }
    if let Some(n) = args.start_lookback_days {
        cfg.start_lookback_days = n;
    }
    let format = args.format;
    let summary = LiveJob::new(&ctx.lake, &cfg)
        .once(args.once)
        .with_shutdown(stop)
        .run(|m| {
            ops.on_batch(m);
            print_batch(m, format);
        })
        .await?;
    print_summary(&summary, format);
    Ok(summary)
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn time_text(us: Option<i64>) -> String {
    us.and_then(chrono::DateTime::from_timestamp_micros)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_batch(m: &BatchMetrics, format: SummaryFormat) {
    let mut out = std::io::stdout().lock();
    let _ = match format {
        SummaryFormat::Json => writeln!(
            out,
            "{}",
            serde_json::to_string(m).unwrap_or_default()
        ),
        SummaryFormat::Table => writeln!(
            out,
            "batch {}{}: {} files, {} rows -> {} applied, {} deduped, {} late, {} bad; {} ms; watermark {}; {} keys in dedup state",
            m.batch,
            if m.recovered { " (redone after a crash)" } else { "" },
            m.files,
            m.rows,
            m.applied,
            m.deduped,
            m.late,
            m.bad_rows,
            m.batch_ms,
            time_text(m.watermark_us),
            m.state_keys,
        ),
    };
    let _ = out.flush();
}

fn print_summary(s: &LiveSummary, format: SummaryFormat) {
    let mut out = std::io::stdout().lock();
    // A closed stdout is not an error for a summary line.
    let _ = match format {
        SummaryFormat::Json => writeln!(out, "{}", serde_json::json!({ "summary": s })),
        SummaryFormat::Table => writeln!(
            out,
            "live: {} batches, {} files, {} rows: {} applied to live_view, {} duplicates dropped, {} late rows in live_late, {} quarantined files; watermark {}",
            s.batches,
            s.files,
            s.rows,
            s.applied,
            s.deduped,
            s.late,
            s.quarantined.len(),
            time_text(s.watermark_us),
        ),
    };
}
