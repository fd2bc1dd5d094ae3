//! Named crash points between the durable steps of the ledger and the live mode.
//!
//! A `kill -9` at a random moment rarely lands in the few milliseconds between two commits, so
//! the tests that prove a crash changes nothing name the moment instead: with
//! `TALLY_FAILPOINT=<name>` the process stops dead at that point, as a `kill -9` would there
//! (`abort`: no destructor, no flush, no lease release). `TALLY_FAILPOINT=<name>:stop` sends
//! the process SIGSTOP instead, as a suspended VM or a long pause would; the test resumes it
//! with SIGCONT. Several points may be given, comma-separated.
//!
//! Failpoints exist in builds with debug assertions (the tests' and the README's dev binary);
//! in a release build [`hit`] is an empty function and the variable is never read.

/// The environment variable naming the failpoints to trigger.
pub const VAR: &str = "TALLY_FAILPOINT";

/// Every failpoint, in the order a ledger run or a live batch passes them. Tests iterate over
/// these, so a new point is tested as soon as it is listed here.
pub const LEDGER_POINTS: &[&str] = &[
    "ledger_after_listing",
    "ledger_after_input_check",
    "ledger_after_part_files",
    "ledger_before_commit",
    "ledger_after_fence",
    "ledger_after_commit",
    "ledger_after_conflicts_commit",
    "ledger_after_runs_row",
];

/// The live mode's points, in batch order.
pub const LIVE_POINTS: &[&str] = &[
    "live_after_checkpoint",
    "live_after_late_commit",
    "live_after_view_commit",
    "live_after_rollup",
];

/// Stops the process here when `TALLY_FAILPOINT` names `point` (see the module docs).
#[cfg(debug_assertions)]
pub fn hit(point: &str) {
    use std::sync::LazyLock;
    static ARMED: LazyLock<Vec<(String, String)>> = LazyLock::new(|| {
        std::env::var(VAR)
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                let (name, action) = s.trim().split_once(':').unwrap_or((s.trim(), "abort"));
                (name.to_string(), action.to_string())
            })
            .collect()
    });
    let Some((_, action)) = ARMED.iter().find(|(name, _)| name == point) else {
        return;
    };
    eprintln!("failpoint {point}: {action}");
    match action.as_str() {
        "stop" => {
            if let Err(e) = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP) {
                eprintln!("failpoint {point}: cannot stop: {e}");
            }
        }
        _ => std::process::abort(),
    }
}

/// Release builds carry no failpoints.
#[cfg(not(debug_assertions))]
pub fn hit(_point: &str) {}
