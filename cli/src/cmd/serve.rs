//! `tally serve`: the lake read-only over Arrow Flight SQL, the Postgres wire and HTTP, until
//! SIGTERM or Ctrl-C; with `--live`, the live loop runs beside it (one command ingests and
//! serves) and both stop on the same signal, the loop after its current batch.

use crate::args::ServeArgs;
use crate::context::Context;
use anyhow::Result;
use std::io::Write;
use std::sync::Arc;
use tally_engine::serve::{self, auth::Token, ServeOptions};

pub async fn run(ctx: &Context, args: &ServeArgs) -> Result<()> {
    let opts = ServeOptions {
        http: serve::parse_addr("--http", &args.http)?,
        flight_sql: serve::parse_addr("--flight-sql", &args.flight_sql)?,
        pg: serve::parse_addr("--pg", &args.pg)?,
        memory_limit: args.memory_limit,
        max_concurrent_queries: args
            .max_concurrent_queries
            .unwrap_or_else(serve::admission::default_max_queries),
        max_connections: args.max_connections,
        query_timeout: args.query_timeout.into(),
        token: Token::new(std::env::var("TALLY_TOKEN").ok()),
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(serve::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        },
        insecure: args.insecure,
        result_cache: args.result_cache,
    };
    if args.live_args.metrics.is_some() {
        anyhow::bail!(tally_engine::TallyError::Usage {
            message: "--metrics is for tally live; tally serve --live serves /metrics on its --http address".into(),
        });
    }
    // Flushed per line: scripts and tests wait for these lines to connect.
    let listening = |name: &str, addr: std::net::SocketAddr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening {name} {addr}");
        let _ = out.flush();
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = Arc::clone(&stop_tx);
    tokio::spawn(async move {
        super::live::wait_for_signal().await;
        let _ = on_signal.send(true);
    });
    let ops = if args.live {
        Some(super::live::start_ops(ctx, &args.live_args).await?)
    } else {
        None
    };
    let mut served_stop = stop_rx.clone();
    let served = serve::serve(
        ctx.lake.clone(),
        ctx.config.clone(),
        opts,
        ops.clone(),
        listening,
        async move {
            let _ = served_stop.wait_for(|s| *s).await;
        },
    );
    let Some(ops) = ops else {
        served.await?;
        return Ok(());
    };
    // Both run until the signal; the loop finishes its batch (the checkpoint stays
    // consistent) and the server its queries. Either failing stops the other (a supervisor
    // restarts the process); the loop ending on its own (`--once`) leaves the server running.
    let live = super::live::run_loop(ctx, &args.live_args, stop_rx, &ops);
    tokio::pin!(served, live);
    let (mut served_done, mut live_done) = (None, None);
    while served_done.is_none() || live_done.is_none() {
        tokio::select! {
            r = &mut served, if served_done.is_none() => {
                if r.is_err() {
                    let _ = stop_tx.send(true);
                }
                served_done = Some(r);
            }
            r = &mut live, if live_done.is_none() => {
                if r.is_err() {
                    let _ = stop_tx.send(true);
                }
                live_done = Some(r);
            }
        }
    }
    ops.shutdown().await;
    if let Some(r) = live_done {
        r?;
    }
    if let Some(r) = served_done {
        r?;
    }
    Ok(())
}
