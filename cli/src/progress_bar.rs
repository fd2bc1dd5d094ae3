//! Progress of long jobs: an `indicatif` bar on a terminal, nothing otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use tally_engine::progress::Progress;

/// A progress bar on stderr when it is a terminal; silent otherwise.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar (hidden unless stderr is a terminal).
    pub fn new() -> Self {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        Self { bar }
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn set_total(&self, unit: &str, total: u64) {
        let template = format!(
            "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            self.bar.set_style(style);
        }
        self.bar.set_length(total);
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }

    fn message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }
}
