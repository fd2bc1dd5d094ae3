//! `tally tables`: what is registered, in which format, where.

use crate::context::Context;
use anyhow::Result;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use tally_engine::session::{SessionOptions, TallySession};

/// Renders the table list (shared with the shell's `\d`).
pub fn render(session: &TallySession) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["table", "format", "location", "detail"]);
    for info in session.tables() {
        t.add_row([
            info.name.as_str(),
            info.format,
            info.location.as_str(),
            info.detail.as_str(),
        ]);
    }
    t.to_string()
}

pub async fn run(ctx: &Context) -> Result<()> {
    let session = ctx.session(&SessionOptions::default()).await?;
    if session.tables().is_empty() {
        println!(
            "no tables yet in {} (write some with `tally generate`)",
            session.lake().root()
        );
    } else {
        println!("{}", render(&session));
    }
    Ok(())
}
