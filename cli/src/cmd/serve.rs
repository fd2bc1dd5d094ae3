//! `tally serve`: the lake read-only over Arrow Flight SQL, the Postgres wire and HTTP, until
//! SIGTERM or Ctrl-C; with `--live`, the live loop runs beside it (one command ingests and
//! serves) and both stop on the same signal, the loop after its current batch.

use crate::args::ServeArgs;
use crate::context::Context;
use anyhow::Result;
use std::io::Write;
use tally_engine::serve::{self, auth::Token, ServeOptions};

pub async fn run(ctx: &Context, args: &ServeArgs) -> Result<()> {
    let opts = ServeOptions {
        http: serve::parse_addr("--http", &args.http)?,
        flight_sql: serve::parse_addr("--flight-sql", &args.flight_sql)?,
        pg: serve::parse_addr("--pg", &args.pg)?,
        memory_limit: args.memory_limit,
        query_timeout: args.query_timeout.into(),
        token: Token::new(std::env::var("TALLY_TOKEN").ok()),
    };
    // Flushed per line: scripts and tests wait for these lines to connect.
    let listening = |name: &str, addr: std::net::SocketAddr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening {name} {addr}");
        let _ = out.flush();
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        super::live::wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut served_stop = stop_rx.clone();
    let served = serve::serve(
        ctx.lake.clone(),
        ctx.config.clone(),
        opts,
        listening,
        async move {
            let _ = served_stop.wait_for(|s| *s).await;
        },
    );
    if !args.live {
        served.await?;
        return Ok(());
    }
    // Either ending with an error ends the process (a supervisor restarts both); the live
    // loop ending on its own (`--once`) leaves the server running.
    let live = super::live::run_loop(ctx, &args.live_args, stop_rx);
    tokio::pin!(served);
    tokio::select! {
        r = &mut served => r?,
        r = live => {
            r?;
            served.await?;
        }
    }
    Ok(())
}
