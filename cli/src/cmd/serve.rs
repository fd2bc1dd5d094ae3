//! `tally serve`: the lake read-only over Arrow Flight SQL, the Postgres wire and HTTP, until
//! SIGTERM or Ctrl-C.

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
    serve::serve(
        ctx.lake.clone(),
        ctx.config.clone(),
        opts,
        listening,
        super::live::wait_for_signal(),
    )
    .await?;
    Ok(())
}
