//! `tally worker`: runs plan stages for `--workers` callers until SIGTERM or Ctrl-C.
//!
//! Prints `listening worker HOST:PORT` (and `listening metrics HOST:PORT` with `--metrics`)
//! once it accepts work, so scripts and tests can wait for it.

use crate::args::WorkerArgs;
use crate::context::Context;
use anyhow::Result;
use std::io::Write;
use tally_engine::cluster::worker::{self, WorkerOptions};
use tally_engine::ops::metrics_server;
use tally_engine::serve::{self, auth::Token};
use tally_engine::TallyError;

pub async fn run(ctx: &Context, args: &WorkerArgs) -> Result<()> {
    let token = Token::new(std::env::var("TALLY_TOKEN").ok());
    let Some(bind) = serve::parse_addr("--bind", &args.bind)? else {
        anyhow::bail!(TallyError::Usage {
            message: "--bind off: a worker needs an address to accept work on".into(),
        });
    };
    let bound = worker::bind(
        &ctx.lake,
        &ctx.config,
        WorkerOptions {
            bind,
            token: token.clone(),
            memory_limit: args.memory_limit,
        },
    )
    .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        super::live::wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some(addr) = args.metrics.as_deref() {
        if let Some(addr) = serve::parse_addr("--metrics", addr)? {
            let listener = metrics_server::bind(addr, &token).await?;
            say("metrics", listener.local_addr()?);
            tokio::spawn(metrics_server::run(
                bound.metrics(),
                listener,
                token,
                stopped(stop_rx.clone()),
            ));
        }
    }
    say("worker", bound.local_addr()?);
    bound.serve(stopped(stop_rx)).await?;
    Ok(())
}

/// One `listening …` line, flushed: callers wait for it to connect.
fn say(name: &str, addr: std::net::SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {name} {addr}");
    let _ = out.flush();
}
